//! `pretrain validate --eval_backend slurm` on a real single-node Slurm
//! cluster (`scripts/slurm_up.sh`: Debian's slurmctld and slurmd, two fake
//! GPUs, memory enforced): the three-miner run ranks as the local backend
//! does with every model run as a Slurm job; each fault (memory, time,
//! crash, scancel) costs only its model; a stopped or killed validator
//! leaves no jobs and a restart finishes; two GPUs, two jobs at once.
//!
//! Ignored by default (they need the cluster); run them with
//! `scripts/slurm_up.sh && cargo test --release --locked -p pretrain-cli
//! --test validate_slurm -- --ignored`. Without Slurm they fail, loudly.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job
#![cfg(unix)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::Device;
use pretrain_core::scoring::Uid;
use pretrain_model::Model;
use serde_json::Value;

mod common;
#[path = "common/net.rs"]
mod net;
use net::{copy_dir, train_batches, trained, Net, TINY};

const IGNORED: &str = "needs slurm (scripts/slurm_up.sh)";

// Validators that use both cores (or the cluster's GPUs) run one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

/// Panics unless a Slurm cluster answers with an usable node.
fn require_slurm() {
    let out = Command::new("sinfo").args(["-h", "-o", "%T"]).output();
    let states = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!(
            "{IGNORED}: sinfo failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("{IGNORED}: cannot run sinfo: {e}"),
    };
    // Busy nodes (allocated, mixed, completing) are usable; down, drained
    // or failed ones are not.
    let unusable = ["down", "drain", "fail", "unk", "not_responding", "inval"];
    assert!(
        states
            .lines()
            .map(str::trim)
            .any(|s| !s.is_empty() && !unusable.iter().any(|u| s.starts_with(u))),
        "{IGNORED}: no usable node (sinfo: {states:?})"
    );
}

/// A corpus of exactly one page (100 short documents): every step of every
/// run evaluates the same batches, so two runs can be compared loss by loss.
fn one_page_corpus(net: &Net) -> PathBuf {
    let dir = net.dir("one-page");
    let sample = pretrain_data::LocalSource::open(pretrain_data::sample_corpus_dir()).unwrap();
    let docs = pretrain_data::read_all_documents(&sample).unwrap();
    let mut text = String::new();
    for d in docs.iter().take(100) {
        let mut end = d.len().min(250);
        while !d.is_char_boundary(end) {
            end -= 1;
        }
        text.push_str(&serde_json::json!({ "content": &d[..end] }).to_string());
        text.push('\n');
    }
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("docs.jsonl"), text).unwrap();
    dir
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

fn uid_row(line: &Value, uid: Uid) -> Value {
    line["uids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["uid"] == uid)
        .cloned()
        .unwrap_or_else(|| panic!("uid {uid} not in step {line}"))
}

/// The job-name prefix the validator logged at start.
fn job_prefix(log: &str) -> String {
    let at = log
        .find("prefix=pretrain-")
        .unwrap_or_else(|| panic!("no Slurm job prefix in the log:\n{log}"));
    log[at + "prefix=".len()..]
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap()
        .to_string()
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every job Slurm remembers (`scontrol show jobs`, finished ones for
/// MinJobAge) whose name starts with `prefix`: name to state.
fn slurm_jobs(prefix: &str) -> BTreeMap<String, Vec<String>> {
    let out = Command::new("scontrol")
        .args(["show", "jobs", "-o"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut jobs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .unwrap_or_default()
                .to_string()
        };
        let name = field("JobName=");
        if name.starts_with(&format!("{prefix}-")) {
            jobs.entry(name).or_default().push(field("JobState="));
        }
    }
    jobs
}

/// Queued or running jobs (`squeue`) whose name starts with `prefix`.
fn active_jobs(prefix: &str) -> Vec<(String, String)> {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%j %T"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(n, _)| n.starts_with(&format!("{prefix}-")))
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

fn slurm_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--eval_backend",
        "slurm",
        "--slurm.mem",
        "1G",
        "--slurm.extra_args",
        "--cpus-per-task=1",
    ];
    v.extend_from_slice(extra);
    v
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    log
}

#[test]
#[ignore = "needs slurm (scripts/slurm_up.sh)"]
fn three_miners_rank_as_with_local_and_every_model_ran_as_a_slurm_job() {
    require_slurm();
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let batches = train_batches();
    let (weak, strong, copy) = (PathBuf::from(TINY), net.dir("strong"), net.dir("copy"));
    trained(&strong, 25, &batches);
    copy_dir(&strong, &copy);
    let (hk_weak, uid_weak) = net.miner(1);
    let (hk_strong, uid_strong) = net.miner(2);
    let (hk_copy, uid_copy) = net.miner(3);
    net.push_seed(&hk_weak, &weak, "m/weak", None);
    let (_, strong_block) = net.push_seed(&hk_strong, &strong, "m/strong", None);
    std::thread::sleep(Duration::from_millis(500)); // a later block for the copy
    let (_, copy_block) = net.push_seed(&hk_copy, &copy, "m/copy", None);
    assert!(copy_block > strong_block);
    let corpus = format!("local:{}", one_page_corpus(&net).display());
    let common = [
        "--max_steps",
        "2",
        "--eval_workers",
        "3",
        "--dataset",
        &corpus,
    ];

    let t = Instant::now();
    run_ok(&mut net.validate_cmd(&common));
    let local_wall = t.elapsed().as_secs_f64();
    let local = net.metrics();
    fs::rename(net.dir("validator"), net.dir("validator-local")).unwrap();

    let t = Instant::now();
    let log = run_ok(&mut net.validate_cmd(&slurm_args(&common)));
    let slurm_wall = t.elapsed().as_secs_f64();
    let slurm = net.metrics();
    assert_eq!(local.len(), 2);
    assert_eq!(slurm.len(), 2);

    for (l, s) in local.iter().zip(&slurm) {
        // One page: both runs evaluated the same batches.
        assert_eq!(l["pages"], s["pages"]);
        assert_eq!(l["n_batches"], s["n_batches"]);
        for uid in [uid_weak, uid_strong, uid_copy] {
            let (lr, sr) = (uid_row(l, uid), uid_row(s, uid));
            assert!(sr["error"].is_null(), "{sr}");
            let (ll, sl) = (f64s(&lr["losses"]), f64s(&sr["losses"]));
            assert_eq!(ll.len(), sl.len());
            for (a, b) in ll.iter().zip(&sl) {
                assert!(
                    a.is_finite() && (a - b).abs() <= 1e-5 * a.abs(),
                    "{a} vs {b}"
                );
            }
            assert_eq!(lr["win_rate"], sr["win_rate"], "uid {uid}");
            let (lw, sw) = (
                lr["weight"].as_f64().unwrap(),
                sr["weight"].as_f64().unwrap(),
            );
            assert!((lw - sw).abs() < 1e-6, "uid {uid}: {lw} vs {sw}");
        }
        // The ranking: trained beats untrained, the original beats its later copy.
        let mean = |uid| uid_row(s, uid)["mean_loss"].as_f64().unwrap();
        assert!(mean(uid_strong) < mean(uid_weak), "{s}");
        assert_eq!(
            uid_row(s, uid_strong)["losses"],
            uid_row(s, uid_copy)["losses"]
        );
        assert_eq!(uid_row(s, uid_strong)["win_rate"], 1.0);
        let weight = |uid| uid_row(s, uid)["weight"].as_f64().unwrap();
        assert!(weight(uid_strong) > weight(uid_copy), "{s}");
        assert!(weight(uid_strong) > weight(uid_weak), "{s}");
    }

    // Every model of every step ran as one Slurm job, which completed.
    let prefix = job_prefix(&log);
    let jobs = slurm_jobs(&prefix);
    let want: BTreeSet<String> = [1, 2]
        .iter()
        .flat_map(|step| {
            [uid_weak, uid_strong, uid_copy].map(|uid| format!("{prefix}-s{step}-u{uid}"))
        })
        .collect();
    assert_eq!(
        jobs.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "{jobs:?}"
    );
    for (name, states) in &jobs {
        assert_eq!(states, &["COMPLETED"], "{name}");
    }
    assert!(active_jobs(&prefix).is_empty());
    let step_s = |m: &[Value]| {
        m.iter()
            .map(|l| l["step_s"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    eprintln!(
        "MEASURE local: step_s={:?} process_wall_s={local_wall:.1}; slurm: step_s={:?} process_wall_s={slurm_wall:.1}",
        step_s(&local),
        step_s(&slurm)
    );
}

#[test]
#[ignore = "needs slurm (scripts/slurm_up.sh)"]
fn each_slurm_fault_costs_only_its_model_with_the_reason() {
    require_slurm();
    let net = Net::new();
    let batches = train_batches();
    // Distinct models (distinct hashes), one per fault and a good one.
    let names = ["good", "memhog", "overtime", "crash", "cancelme"];
    let mut uids = BTreeMap::new();
    for (k, name) in names.iter().enumerate() {
        let dir = net.dir(name);
        trained(&dir, k + 1, &batches);
        let (hk, uid) = net.miner(10 + k as u8);
        net.push_seed(&hk, &dir, &format!("m/{name}"), None);
        uids.insert(*name, uid);
    }
    let log_path = net.dir("faults.log");
    let mut child = net
        .validate_cmd(&[
            "--eval_backend",
            "slurm",
            "--slurm.mem",
            "400M",
            // Slurm counts whole minutes: one, checked every 30 s or so.
            "--slurm.time",
            "0:05",
            "--max_steps",
            "1",
            "--eval_workers",
            "5",
            // The validator's own limits are longer: Slurm's must fire first.
            "--eval_timeout",
            "400",
            "--step_timeout",
            "600",
        ])
        .env(
            "PRETRAIN_TEST_WORKER_FAULT",
            "models--m--memhog=grow,models--m--overtime=sleep,models--m--crash=abort,models--m--cancelme=sleep",
        )
        .stderr(fs::File::create(&log_path).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let log = || fs::read_to_string(&log_path).unwrap();
    wait_for("the Slurm job prefix", Duration::from_secs(60), || {
        log().contains("prefix=pretrain-")
    });
    let prefix = job_prefix(&log());
    // Cancel one job from outside once it runs (and sleeps, having its batches).
    let victim = format!("{prefix}-s1-u{}", uids["cancelme"]);
    wait_for("the job to cancel", Duration::from_secs(180), || {
        active_jobs(&prefix)
            .iter()
            .any(|(n, s)| n == &victim && s == "RUNNING")
    });
    std::thread::sleep(Duration::from_secs(3));
    let out = Command::new("scancel")
        .arg(format!("--name={victim}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let t = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", log());
    eprintln!(
        "faults step finished {:.0} s after the scancel",
        t.elapsed().as_secs_f64()
    );

    let m = net.metrics();
    assert_eq!(m.len(), 1, "{}", log());
    let line = &m[0];
    let good = uid_row(line, uids["good"]);
    assert!(good["error"].is_null(), "{good}");
    assert!(
        f64s(&good["losses"]).iter().all(|l| l.is_finite()),
        "{good}"
    );
    let expect = [
        ("memhog", "exceeded its memory limit of --mem=400M"),
        ("overtime", "ran past its time limit (--time=0:05)"),
        ("crash", "without an answer"),
    ];
    // A job cancelled from outside is no fault of the model: it is not
    // evaluated this step (no row, no +inf) and keeps its standing (none yet).
    let cancelled = uids["cancelme"];
    assert!(
        !line["uids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["uid"] == cancelled),
        "{line}"
    );
    assert!(
        log().lines().any(|l| l.contains("not evaluated")
            && l.contains("cancelled in Slurm")
            && l.contains(&format!("{prefix}-s1-u{cancelled}"))),
        "{}",
        log()
    );
    let weights: Vec<f64> = line["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    for (name, why) in expect {
        let uid = uids[name];
        let row = uid_row(line, uid);
        let err = row["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no error: {row}"));
        assert!(err.contains(why), "{name}: expected {why:?} in {err:?}");
        assert!(err.contains(&format!("{prefix}-s1-u{uid}")), "{err}");
        assert!(
            f64s(&row["losses"]).iter().all(|l| l.is_infinite()),
            "{row}"
        );
        assert!(weights[usize::from(uid)] < weights[usize::from(uids["good"])]);
    }
    let crash = uid_row(line, uids["crash"]);
    assert!(
        crash["error"].as_str().unwrap().contains("Aborted"),
        "{crash}"
    );
    // Nothing of this validator is left in the queue.
    assert!(
        active_jobs(&prefix).is_empty(),
        "{:?}",
        active_jobs(&prefix)
    );
}

#[test]
#[ignore = "needs slurm (scripts/slurm_up.sh)"]
fn a_stopped_or_killed_validator_leaves_no_jobs_and_a_restart_finishes() {
    require_slurm();
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let mut uids = Vec::new();
    for (k, repo) in ["m/ka", "m/kb"].iter().enumerate() {
        let dir = net.dir(&format!("model{k}"));
        trained(&dir, k + 1, &train_batches());
        let (hk, uid) = net.miner(30 + k as u8);
        net.push_seed(&hk, &dir, repo, None);
        uids.push(uid);
    }
    // Every worker hangs after reading its batches: both jobs stay running.
    let start_hanging = |log: &Path| {
        let child = net
            .validate_cmd(&slurm_args(&["--eval_workers", "2"]))
            .env("PRETRAIN_TEST_WORKER_FAULT", "snapshots=sleep")
            .stderr(fs::File::create(log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the Slurm job prefix", Duration::from_secs(60), || {
            fs::read_to_string(log)
                .unwrap()
                .contains("prefix=pretrain-")
        });
        let prefix = job_prefix(&fs::read_to_string(log).unwrap());
        wait_for("both jobs to run", Duration::from_secs(180), || {
            active_jobs(&prefix)
                .iter()
                .filter(|(_, s)| s == "RUNNING")
                .count()
                == 2
        });
        (child, prefix)
    };

    // Ctrl-C (SIGINT): the validator cancels its jobs and stops.
    let (child, prefix) = start_hanging(&net.dir("run1.log"));
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let log1 = fs::read_to_string(net.dir("run1.log")).unwrap();
    assert!(log1.contains("SIGINT: cancelling"), "{log1}");
    wait_for("the jobs to be gone", Duration::from_secs(30), || {
        active_jobs(&prefix).is_empty()
    });

    // kill -9: nothing runs in the validator; its jobs outlive it (a killed
    // srun does not end its job) until the restart cancels them by name.
    let (mut child, prefix2) = start_hanging(&net.dir("run2.log"));
    assert_eq!(prefix2, prefix, "the prefix follows --model_dir");
    child.kill().unwrap();
    child.wait().unwrap();
    let left = active_jobs(&prefix);
    eprintln!("after kill -9: {left:?}");

    let log3 =
        run_ok(&mut net.validate_cmd(&slurm_args(&["--max_steps", "1", "--eval_workers", "2"])));
    // A job still running then is cancelled by the restart (one that was
    // completing may be gone by then: the preflight runs first).
    if left.iter().any(|(_, state)| state == "RUNNING") {
        let cancelled = (1..=left.len())
            .any(|n| log3.contains(&format!("cancelled {n} job(s) of an earlier run")));
        assert!(cancelled, "{log3}");
    }
    assert!(
        active_jobs(&prefix).is_empty(),
        "{:?}",
        active_jobs(&prefix)
    );
    let m = net.metrics();
    assert_eq!(m.len(), 1, "{log3}");
    for uid in &uids {
        let row = uid_row(&m[0], *uid);
        assert!(row["error"].is_null(), "{row}");
    }
    assert_eq!(net.state()["step"], 1);
}

#[test]
#[ignore = "needs slurm (scripts/slurm_up.sh)"]
fn two_fake_gpus_run_at_most_two_jobs_each_on_its_own_device() {
    require_slurm();
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let batches = train_batches();
    let mut uids = Vec::new();
    for k in 0..3 {
        let dir = net.dir(&format!("model{k}"));
        trained(&dir, k + 1, &batches);
        let (hk, uid) = net.miner(40 + k as u8);
        net.push_seed(&hk, &dir, &format!("m/g{k}"), None);
        uids.push(uid);
    }
    // A worker that records when it ran and on which GPU, then is the real one.
    let record = net.dir("jobs.log");
    let wrapper = net.dir("worker.sh");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"start $(date +%s.%N) $SLURM_JOB_NAME $CUDA_VISIBLE_DEVICES\" >> {rec}\nsleep 3\n{bin} \"$@\"\nrc=$?\necho \"end $(date +%s.%N) $SLURM_JOB_NAME\" >> {rec}\nexit $rc\n",
            rec = record.display(),
            bin = env!("CARGO_BIN_EXE_pretrain")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    run_ok(&mut net.validate_cmd(&slurm_args(&[
        "--max_steps",
        "1",
        "--eval_workers",
        "3",
        "--slurm.gres",
        "gpu:1",
        "--slurm.worker_program",
        wrapper.to_str().unwrap(),
    ])));
    let m = net.metrics();
    for uid in &uids {
        assert!(uid_row(&m[0], *uid)["error"].is_null(), "{}", m[0]);
    }
    // Per job: start, end, device.
    let text = fs::read_to_string(&record).unwrap();
    let mut jobs: BTreeMap<String, (f64, f64, String)> = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let e = jobs.entry(f[2].to_string()).or_default();
        match f[0] {
            "start" => {
                e.0 = f[1].parse().unwrap();
                e.2 = f.get(3).unwrap_or(&"").to_string();
            }
            _ => e.1 = f[1].parse().unwrap(),
        }
    }
    assert_eq!(jobs.len(), 3, "{text}");
    for (name, (start, end, dev)) in &jobs {
        assert!(end > start, "{text}");
        assert!(
            dev == "0" || dev == "1",
            "{name}: CUDA_VISIBLE_DEVICES={dev:?}"
        );
        // Jobs running at the same time hold different GPUs.
        for (other, (s, e, d)) in &jobs {
            if other != name && s < end && e > start {
                assert_ne!(d, dev, "{name} and {other} overlap on one GPU:\n{text}");
            }
        }
    }
    // The most jobs running at once, from the start and end events.
    let mut events: Vec<(f64, i32)> = jobs
        .values()
        .flat_map(|(s, e, _)| [(*s, 1), (*e, -1)])
        .collect();
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut now, mut most) = (0, 0);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    // Three in flight, two GPUs: two ran together, never three.
    assert_eq!(most, 2, "{text}");
}

#[test]
#[ignore = "needs slurm (scripts/slurm_up.sh)"]
fn workers_read_models_where_the_nodes_see_them_and_check_their_hash() {
    require_slurm();
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let batches = train_batches();
    let mut uids = BTreeMap::new();
    for (k, name) in ["intact", "tampered"].iter().enumerate() {
        let dir = net.dir(name);
        trained(&dir, k + 1, &batches);
        let (hk, uid) = net.miner(50 + k as u8);
        net.push_seed(&hk, &dir, &format!("m/{name}"), None);
        uids.insert(*name, uid);
    }
    let corpus = format!("local:{}", one_page_corpus(&net).display());
    // Run 1, local: the validator downloads and checks the models.
    run_ok(&mut net.validate_cmd(&["--max_steps", "1", "--dataset", &corpus]));
    // The "shared filesystem" the nodes see: a copy of the store, in which
    // one model's weights changed after the validator checked them.
    let node_view = net.dir("node-view");
    fs::create_dir_all(&node_view).unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(net.dir("validator/models"))
        .arg(node_view.join("models"))
        .status()
        .unwrap();
    assert!(status.success());
    // What a shared filesystem would show the nodes of the file the validator's
    // preflight writes under --model_dir (the copy above is a snapshot).
    fs::write(
        node_view.join(".slurm-preflight"),
        b"pretrain validate: can the Slurm nodes read this?\n",
    )
    .unwrap();
    let tampered = find_file(
        &node_view.join("models"),
        "models--m--tampered",
        "model.safetensors",
    );
    let mut bytes = fs::read(&tampered).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&tampered, bytes).unwrap();

    // Run 2, Slurm, with the nodes' view of --model_dir.
    let log = run_ok(&mut net.validate_cmd(&slurm_args(&[
        "--max_steps",
        "1",
        "--dataset",
        &corpus,
        "--slurm.model_dir",
        node_view.to_str().unwrap(),
    ])));
    let m = net.metrics();
    assert_eq!(m.len(), 2, "{log}");
    let intact = uid_row(&m[1], uids["intact"]);
    assert!(intact["error"].is_null(), "{intact}");
    // One page: the intact copy the nodes read gives run 1's losses.
    assert_eq!(m[0]["pages"], m[1]["pages"]);
    let (before, after) = (
        f64s(&uid_row(&m[0], uids["intact"])["losses"]),
        f64s(&intact["losses"]),
    );
    assert_eq!(before.len(), after.len());
    for (a, b) in before.iter().zip(&after) {
        assert!(
            a.is_finite() && (a - b).abs() <= 1e-5 * a.abs(),
            "{a} vs {b}"
        );
    }
    let bad = uid_row(&m[1], uids["tampered"]);
    let err = bad["error"].as_str().unwrap_or_else(|| panic!("{bad}"));
    assert!(
        err.contains("not the committed") && err.contains(node_view.to_str().unwrap()),
        "{err}"
    );
    assert!(
        f64s(&bad["losses"]).iter().all(|l| l.is_infinite()),
        "{bad}"
    );
}

/// The file `name` under the directory of `root` whose path contains `part`.
fn find_file(root: &Path, part: &str, name: &str) -> PathBuf {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name) && p.to_string_lossy().contains(part)
            {
                return p;
            }
        }
    }
    panic!("no {name} under {} with {part}", root.display());
}

/// Step wall time, local against Slurm, for the same models and batches
/// (one page): the cost of going through Slurm. By hand:
/// `MEASURE_N=2 MEASURE_MODEL=gpt2|tiny cargo test --release -p pretrain-cli
/// --test validate_slurm measure -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark, needs slurm (scripts/slurm_up.sh); run by hand with --release"]
fn measure_local_vs_slurm_step_time() {
    require_slurm();
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    let n: usize = env("MEASURE_N", "2").parse().unwrap();
    let workers = env("MEASURE_WORKERS", "1");
    let kind = env("MEASURE_MODEL", "gpt2");
    let net = Net::new();
    let batches = train_batches();
    for k in 0..n {
        let dir = net.dir(&format!("model{k}"));
        if kind == "tiny" {
            trained(&dir, k + 1, &batches);
        } else {
            Model::default_gpt2(k as u64, &Device::Cpu)
                .unwrap()
                .save(&dir)
                .unwrap();
        }
        let (hk, _) = net.miner(60 + k as u8);
        net.push_seed(&hk, &dir, &format!("m/measure{k}"), None);
    }
    let corpus = format!("local:{}", one_page_corpus(&net).display());
    let common = [
        "--max_steps",
        "1",
        "--eval_workers",
        &workers,
        "--dataset",
        &corpus,
    ];
    run_ok(&mut net.validate_cmd(&common));
    let local = net.metrics().remove(0);
    fs::rename(net.dir("validator"), net.dir("validator-local")).unwrap();
    let mem = if kind == "tiny" { "1G" } else { "4G" };
    let mut args = slurm_args(&common);
    args.extend(["--slurm.mem", mem]);
    // The later --slurm.mem is refused by clap; drop the default one.
    let at = args.iter().position(|a| *a == "--slurm.mem").unwrap();
    args.drain(at..at + 2);
    run_ok(&mut net.validate_cmd(&args));
    let slurm = net.metrics().remove(0);
    for (name, l) in [("local", &local), ("slurm", &slurm)] {
        eprintln!(
            "MEASURE backend={name} model={kind} n_models={n} eval_workers={workers} n_batches={} step_s={:.2} eval_s={:.2}",
            l["n_batches"],
            l["step_s"].as_f64().unwrap(),
            l["eval_s"].as_f64().unwrap()
        );
        assert!(
            l["uids"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| u["error"].is_null()),
            "{l}"
        );
    }
}

//! `pretrain validate` under faults of its own: a full disk, a
//! read-only model directory, a hub that answers 404, 401, 403 or 400 with
//! an HTML page. None of them may refuse a miner: the model update is
//! deferred and retried, and once the fault is gone the miner is scored.
//! Values from the hub reach the log escaped.
//!
//! The disk tests mount a small tmpfs, so they need root; they fail (not
//! pass) where they cannot mount one.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
#[path = "common/net.rs"]
mod net;
use net::{Net, TINY};

// The validators of these tests each use both cores: one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

/// `validate_cmd` with `--hub` replaced by `hub` (clap takes one `--hub`).
fn validate_with_hub(net: &Net, hub: &[&str], extra: &[&str]) -> Command {
    let base = net.validate_cmd(extra);
    let mut args: Vec<String> = base
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let i = args.iter().position(|a| a == "--hub").unwrap();
    args.drain(i..i + 2);
    args.extend(hub.iter().map(|s| s.to_string()));
    let mut c = Command::new(env!("CARGO_BIN_EXE_pretrain"));
    c.args(args).stdin(Stdio::null());
    c
}

/// A hub endpoint that answers every request with `status` and a
/// multi-line HTML page holding a terminal escape (a proxy's error page).
fn html_error_server(status: u16) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let body = "<html>\n<title>\x1b]0;pwned\x07Error</title>\n2026-12-01T00:00:00Z INFO weights set FORGED\n</html>";
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} Oops\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    url
}

/// Lines of `log` saying `hotkey`'s update was deferred.
fn deferrals(log: &Path, hotkey: &str) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("model update deferred") && l.contains(hotkey))
        .map(str::to_string)
        .collect()
}

/// Runs the validator until its log shows `hotkey`'s update deferred
/// twice (so it was retried), then kills it; returns the log.
fn run_until_deferred_twice(mut cmd: Command, log: &Path, hotkey: &str) -> String {
    let mut child: Child = cmd.stderr(fs::File::create(log).unwrap()).spawn().unwrap();
    let waited = Instant::now();
    while deferrals(log, hotkey).len() < 2 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the validator exited ({status}):\n{}",
                fs::read_to_string(log).unwrap()
            );
        }
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "no deferral in time:\n{}",
            fs::read_to_string(log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    fs::read_to_string(log).unwrap()
}

fn assert_not_refused(net: &Net, log: &str, hotkey: &str) {
    let state = net.state();
    assert!(
        state["refused"].get(hotkey).is_none(),
        "refused for the validator's own failure: {state}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("model refused") && l.contains(hotkey)),
        "{log}"
    );
}

/// One step with the local hub and room on disk: the miner is evaluated.
fn assert_scored_now(net: &Net, uid: u16) {
    let out = net.validate_cmd(&["--max_steps", "1"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let m = net.metrics();
    let last = m.last().unwrap();
    let row = last["uids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["uid"] == uid)
        .cloned()
        .unwrap_or_else(|| panic!("uid {uid} not in {last}"));
    assert!(row["error"].is_null(), "{row}");
    assert!(
        row["losses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l.as_f64().unwrap().is_finite()),
        "{row}"
    );
}

/// Each of the hub's answers that is the validator's side (its endpoint,
/// its token, a request it made) defers the model and is retried, the
/// hub's HTML page reaches the log escaped, and with a working hub the
/// miner is scored.
#[test]
fn hub_errors_of_the_validators_own_defer_and_never_refuse() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let (hk, uid) = net.miner(1);
    net.push_seed(&hk, Path::new(TINY), "m/tiny", None);
    for status in [404u16, 401, 403, 400] {
        let url = html_error_server(status);
        let log_path = net.dir(&format!("hub{status}.log"));
        let cmd = validate_with_hub(&net, &["--hub", "hf", "--hub_endpoint", &url], &[]);
        let mut cmd = cmd;
        cmd.env("HF_ACCESS_TOKEN", "hf_expired_token_of_the_validator");
        let log = run_until_deferred_twice(cmd, &log_path, &hk);
        assert_not_refused(&net, &log, &hk);
        let line = &deferrals(&log_path, &hk)[0];
        assert!(line.contains(&format!("HTTP {status}")), "{line}");
        // The page's newline, ESC and BEL are escaped: one line, no
        // control characters, no forged log line.
        assert!(
            line.contains("\\n2026-12-01T00:00:00Z INFO weights set FORGED"),
            "{line}"
        );
        assert!(line.contains("\\x1b]0;pwned\\x07"), "{line}");
        assert!(!log.contains('\x1b') && !log.contains('\x07'), "{log}");
        assert!(
            !log.lines().any(|l| l.starts_with("2026-12-01T00:00:00Z")),
            "{log}"
        );
    }
    assert_scored_now(&net, uid);
}

/// A tmpfs mounted at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test needs root to mount a tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    fn remount(&self, opts: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The reproduction: `--model_dir`'s models on a disk too small
/// for the model (`No space left on device`), then read-only (`Read-only
/// file system`): deferred each time, never refused; a restart after space
/// is freed scores the miner.
#[test]
fn a_full_or_read_only_disk_defers_and_the_miner_is_scored_once_freed() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let (hk, uid) = net.miner(1);
    net.push_seed(&hk, Path::new(TINY), "m/tiny", None);
    // The model is 6.4 MB; the state stays outside, on the real disk.
    let disk = Tmpfs::mount(&net.dir("validator/models"), "2m");

    let log = run_until_deferred_twice(net.validate_cmd(&[]), &net.dir("full.log"), &hk);
    assert_not_refused(&net, &log, &hk);
    let line = &deferrals(&net.dir("full.log"), &hk)[0];
    assert!(line.contains("No space left on device"), "{line}");

    disk.remount("size=64m,ro");
    let log = run_until_deferred_twice(net.validate_cmd(&[]), &net.dir("ro.log"), &hk);
    assert_not_refused(&net, &log, &hk);
    let line = &deferrals(&net.dir("ro.log"), &hk)[0];
    assert!(line.contains("Read-only file system"), "{line}");

    disk.remount("rw");
    assert_scored_now(&net, uid);
    let state: Value = net.state();
    assert!(state["tracked"].get(&hk).is_some(), "{state}");
}

/// Writes zeros into `path` until the disk under it is full.
fn fill_disk(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
}

/// Three miners end to end; the validator's model disk fills in the middle
/// of its first step, while the third miner's model is being fetched, and
/// is freed after that step: the third is deferred (never refused), then
/// fetched, and every miner ends scored with finite losses.
#[test]
fn three_miners_all_end_scored_when_the_validators_disk_fills_mid_step() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let disk = Tmpfs::mount(&net.dir("validator/models"), "48m");
    let _ = &disk;
    let miners: Vec<(String, u16)> = (1..=3).map(|i| net.miner(i)).collect();
    // Three different models (a config field that changes no weight).
    let mut dirs = Vec::new();
    for i in 0..3 {
        let d = net.dir(&format!("model{i}"));
        fs::create_dir_all(&d).unwrap();
        for e in fs::read_dir(TINY).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        let cfg = d.join("generation_config.json");
        let mut v: Value = serde_json::from_slice(&fs::read(&cfg).unwrap()).unwrap();
        v["miner"] = i.into();
        fs::write(&cfg, v.to_string()).unwrap();
        dirs.push(d);
    }
    net.push_seed(&miners[0].0, &dirs[0], "m/zero", None);
    net.push_seed(&miners[1].0, &dirs[1], "m/one", None);

    let log = net.dir("e2e.log");
    let mut child = net
        .validate_cmd(&["--max_steps", "6"])
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || fs::read_to_string(&log).unwrap_or_default();
    let waited = Instant::now();
    while !read().contains("step 1: loading pages") {
        assert!(child.try_wait().unwrap().is_none(), "{}", read());
        assert!(waited.elapsed() < Duration::from_secs(180), "{}", read());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Mid-step: the disk fills, and the third miner commits.
    let filler = net.dir("validator/models/filler");
    fill_disk(&filler);
    net.push_seed(&miners[2].0, &dirs[2], "m/two", None);
    while deferrals(&log, &miners[2].0).is_empty() {
        assert!(child.try_wait().unwrap().is_none(), "{}", read());
        assert!(waited.elapsed() < Duration::from_secs(300), "{}", read());
        std::thread::sleep(Duration::from_millis(50));
    }
    while net.metrics().is_empty() {
        assert!(child.try_wait().unwrap().is_none(), "{}", read());
        assert!(waited.elapsed() < Duration::from_secs(400), "{}", read());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Freed after the step.
    fs::remove_file(&filler).unwrap();
    let all_scored = |line: &Value| {
        miners.iter().all(|(_, uid)| {
            line["uids"].as_array().unwrap().iter().any(|r| {
                r["uid"] == *uid
                    && r["error"].is_null()
                    && r["losses"].as_array().is_some_and(|l| {
                        !l.is_empty() && l.iter().all(|x| x.as_f64().is_some_and(f64::is_finite))
                    })
            })
        })
    };
    while !net.metrics().iter().any(all_scored) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "validator exited ({status}) before all were scored:\n{}",
                read()
            );
        }
        assert!(waited.elapsed() < Duration::from_secs(600), "{}", read());
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = read();
    let line = &deferrals(&log, &miners[2].0)[0];
    assert!(line.contains("No space left on device"), "{line}");
    let state = net.state();
    assert_eq!(state["refused"], serde_json::json!({}), "{state}");
    for (hk, _) in &miners {
        assert!(state["tracked"].get(hk).is_some(), "{hk}: {state}");
        assert!(
            !text
                .lines()
                .any(|l| l.contains("model refused") && l.contains(hk.as_str())),
            "{text}"
        );
    }
}

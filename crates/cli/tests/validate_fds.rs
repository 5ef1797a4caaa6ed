//! `pretrain validate` under a real open-file limit (soft = hard = 256, set
//! in the child before `exec`, so the validator cannot raise it) while a
//! client floods `--metrics.port` with half-sent requests, as many as the
//! limit twice over, again and again: the endpoint bounds its connections
//! and drops stalled ones, so the validator keeps descriptors for its
//! workers, its state and its logs. Honest models are scored (no `+inf`),
//! the state and `metrics.jsonl` are written, and a scraper still gets an
//! answer during the flood.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job
#![cfg(target_os = "linux")]

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
#[path = "common/net.rs"]
mod net;
use net::{train_batches, trained, Net, TINY};

/// The validator's descriptor limit.
const LIMIT: u64 = 256;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Raises this test's own soft limit to its hard limit (the flood holds
/// more connections than the validator may).
fn raise_own_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// GET /metrics; the body if it answered 200.
fn scrape(port: u16) -> Option<String> {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.1 200").then_some(text)
}

/// Open descriptors of process `pid`.
fn fds_of(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

#[test]
fn a_flood_on_the_metrics_port_under_a_low_fd_limit_costs_no_miner() {
    raise_own_limit();
    let net = Net::new();
    let batches = train_batches();
    let (weak, best) = (PathBuf::from(TINY), net.dir("best"));
    trained(&best, 25, &batches);
    let (hk_weak, uid_weak) = net.miner(1);
    let (hk_best, uid_best) = net.miner(2);
    net.push_seed(&hk_weak, &weak, "m/weak", None);
    net.push_seed(&hk_best, &best, "m/best", None);

    let port = free_port();
    let log = net.dir("validator.log");
    let mut cmd = net.validate_cmd(&["--max_steps", "2", "--metrics.port", &port.to_string()]);
    cmd.stderr(fs::File::create(&log).unwrap());
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: LIMIT as libc::rlim_t,
                rlim_max: LIMIT as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut validator = cmd.spawn().unwrap();
    let pid = validator.id();

    // The flood: rounds of 2 x LIMIT half-sent requests, held a while. Between two
    // rounds the flood's own client scrapes: the endpoint must still answer once its
    // slots come free, however fast the validator's steps are.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let between_rounds = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, opened, between) = (stop.clone(), opened.clone(), between_rounds.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut held = Vec::new();
                for _ in 0..2 * LIMIT {
                    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                        held.push(s);
                    }
                }
                opened.fetch_add(held.len(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(300));
                drop(held);
                std::thread::sleep(Duration::from_millis(20));
                if scrape(port).is_some() {
                    between.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let started = Instant::now();
    let mut answered_during_flood = 0;
    let mut most_fds = 0;
    let status = loop {
        if let Some(status) = validator.try_wait().unwrap() {
            break status;
        }
        if let Some(n) = fds_of(pid) {
            most_fds = most_fds.max(n);
        }
        if opened.load(Ordering::Relaxed) > 0 && scrape(port).is_some() {
            answered_during_flood += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the validator did not finish 2 steps in 600 s:\n{}",
            fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let text = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(
        opened.load(Ordering::Relaxed) >= 2 * LIMIT as usize,
        "the flood never got going"
    );
    let answered_during_flood = answered_during_flood + between_rounds.load(Ordering::Relaxed);
    assert!(
        answered_during_flood > 0,
        "no scrape answered during the flood\n{text}"
    );
    assert!(
        (most_fds as u64) < LIMIT,
        "the validator held {most_fds} descriptors"
    );
    for bad in [
        "Too many open files",
        "scored +inf",
        "cannot save",
        "cannot append",
    ] {
        assert!(!text.contains(bad), "{bad}:\n{text}");
    }
    // Both steps written, both honest models scored on every batch.
    let metrics = net.metrics();
    assert_eq!(metrics.len(), 2, "{text}");
    for step in &metrics {
        for uid in [uid_weak, uid_best] {
            let row = step["uids"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["uid"] == uid)
                .unwrap_or_else(|| panic!("uid {uid} not in {step}"));
            assert!(row["error"].is_null(), "{row}");
            let losses = row["losses"].as_array().unwrap();
            assert!(!losses.is_empty());
            assert!(
                losses
                    .iter()
                    .all(|l| l.as_f64().is_some_and(f64::is_finite)),
                "{row}"
            );
        }
    }
    let state = net.state();
    assert_eq!(state["step"], 2, "{state}");
    // The trained model has the larger weight.
    let w = |uid: u16| state["weights"][usize::from(uid)].as_f64().unwrap();
    assert!(w(uid_best) > w(uid_weak), "{state}");
}

//! The embedded chain: blocks, registration, rate limits, incentive, and
//! several connections and processes on one file.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::path::Path;
use std::time::{Duration, Instant};

use pretrain_chain::embedded::{EmbeddedChain, EmbeddedOptions, SubnetParams, DB_FILE};
use pretrain_chain::wallet::KeyPair;
use pretrain_chain::{Chain, ChainError, Hotkey};

const NETUID: u16 = 9;

fn addr(i: u8) -> String {
    KeyPair::from_secret_seed([i; 32]).unwrap().ss58()
}

fn key(i: u8) -> Hotkey {
    Hotkey::address_only(addr(i))
}

fn open(dir: &Path, block_time: f64) -> EmbeddedChain {
    EmbeddedChain::open(
        dir,
        &EmbeddedOptions {
            block_time: Some(block_time),
            ..EmbeddedOptions::default()
        },
    )
    .unwrap()
}

async fn wait_blocks(chain: &EmbeddedChain, n: u64) {
    let target = chain.current_block().await.unwrap() + n;
    while chain.current_block().await.unwrap() < target {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn blocks_follow_wall_time_and_the_stored_block_time() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = open(tmp.path(), 0.05);
    let t0 = Instant::now();
    let b0 = chain.current_block().await.unwrap();
    assert!(b0 <= 2, "a new chain starts near block 0, got {b0}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b1 = chain.current_block().await.unwrap();
    // One block per 0.05 s of wall time, whatever the sleep really took.
    let expected = t0.elapsed().as_secs_f64() / 0.05;
    assert!(
        ((b1 - b0) as f64 - expected).abs() <= 1.5,
        "{b0} -> {b1}, expected ~{expected}"
    );
    // Another opener asking for another block time gets the chain's own.
    let other = open(tmp.path(), 12.0);
    assert_eq!(other.block_time(), 0.05);
    assert_eq!(other.genesis_time(), chain.genesis_time());
    assert!(tmp.path().join(DB_FILE).is_file());
}

#[tokio::test]
async fn registration_assigns_uids_in_order_and_replaces_on_a_full_subnet() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = open(tmp.path(), 0.02);
    assert!(matches!(
        chain.metagraph(NETUID).await,
        Err(ChainError::NoSuchSubnet(9))
    ));
    let params = SubnetParams {
        max_uids: 3,
        weights_rate_limit: 0,
        ..SubnetParams::default()
    };
    assert!(chain.create_subnet(NETUID, params).await.unwrap());
    assert!(!chain
        .create_subnet(NETUID, SubnetParams::default())
        .await
        .unwrap());
    assert_eq!(chain.subnet(NETUID).await.unwrap(), params);

    for i in 0..3u8 {
        let r = chain.register(NETUID, &addr(i), &addr(100)).await.unwrap();
        assert_eq!(r.uid, u16::from(i));
        assert!(!r.already_registered);
    }
    let again = chain.register(NETUID, &addr(1), &addr(100)).await.unwrap();
    assert_eq!((again.uid, again.already_registered), (1, true));
    assert!(chain
        .register(NETUID, "not-an-address", &addr(100))
        .await
        .is_err());

    // uid 0 validates and gives everything to uid 2: uid 1 has the lowest incentive.
    chain.add_stake(&addr(0), 10.0).await.unwrap();
    wait_blocks(&chain, 1).await;
    chain
        .set_weights(&key(0), NETUID, &[2], &[65535], 1)
        .await
        .unwrap();
    let r = chain.register(NETUID, &addr(3), &addr(101)).await.unwrap();
    assert_eq!(r.uid, 1);
    assert_eq!(r.replaced.as_deref(), Some(addr(1).as_str()));
    let g = chain.metagraph(NETUID).await.unwrap();
    let hotkeys: Vec<&str> = g.neurons.iter().map(|n| n.hotkey.as_str()).collect();
    assert_eq!(hotkeys, vec![addr(0), addr(3), addr(2)]);
    assert_eq!(g.neurons[1].coldkey, addr(101));
    assert_eq!(chain.uid_of(NETUID, &addr(1)).await.unwrap(), None);
    assert_eq!(chain.uid_of(NETUID, &addr(3)).await.unwrap(), Some(1));
}

#[tokio::test]
async fn commitments_are_rate_limited_per_hotkey() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = open(tmp.path(), 0.05);
    let params = SubnetParams {
        commit_rate_limit: 20,
        ..SubnetParams::default()
    };
    chain.create_subnet(NETUID, params).await.unwrap();
    let err = chain.commit(&key(1), NETUID, b"x").await.unwrap_err();
    assert!(
        matches!(err, ChainError::NotRegistered { netuid: 9, .. }),
        "{err:?}"
    );
    chain.register(NETUID, &addr(1), &addr(100)).await.unwrap();
    chain.register(NETUID, &addr(2), &addr(100)).await.unwrap();

    let b1 = chain
        .commit(&key(1), NETUID, b"ns:model:abc:hash")
        .await
        .unwrap();
    let c = chain.commitment(NETUID, &addr(1)).await.unwrap().unwrap();
    assert_eq!(
        (c.block, c.data.as_slice()),
        (b1, &b"ns:model:abc:hash"[..])
    );
    // Another hotkey is not limited by the first one's commit.
    chain.commit(&key(2), NETUID, b"other").await.unwrap();

    let err = chain.commit(&key(1), NETUID, b"second").await.unwrap_err();
    let ChainError::RateLimited(msg) = &err else {
        panic!("expected RateLimited, got {err:?}")
    };
    assert!(msg.contains(&format!("at block {}", b1 + 20)), "{msg}");
    assert!(msg.contains("allowed in"), "{msg}");
    assert_eq!(
        chain
            .commitment(NETUID, &addr(1))
            .await
            .unwrap()
            .unwrap()
            .data,
        b"ns:model:abc:hash"
    );

    while chain.current_block().await.unwrap() < b1 + 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b2 = chain.commit(&key(1), NETUID, b"second").await.unwrap();
    assert!(b2 >= b1 + 20);
    let all = chain.commitments(NETUID).await.unwrap();
    let data: Vec<&[u8]> = all.iter().map(|c| c.data.as_slice()).collect();
    assert_eq!(data, vec![&b"second"[..], &b"other"[..]]);

    let too_long = vec![b'a'; 129];
    assert!(matches!(
        chain.commit(&key(2), NETUID, &too_long).await,
        Err(ChainError::Rejected(_))
    ));
}

#[tokio::test]
async fn incentive_follows_stake_weighted_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = open(tmp.path(), 0.02);
    let params = SubnetParams {
        weights_rate_limit: 200,
        ..SubnetParams::default()
    };
    chain.create_subnet(NETUID, params).await.unwrap();
    for i in 0..4u8 {
        chain.register(NETUID, &addr(i), &addr(100)).await.unwrap();
    }
    // No stake, no permit, no weights.
    let err = chain
        .set_weights(&key(0), NETUID, &[2], &[1], 1)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ChainError::Rejected(m) if m.contains("validator permit")),
        "{err:?}"
    );
    let err = chain
        .set_weights(&key(9), NETUID, &[2], &[1], 1)
        .await
        .unwrap_err();
    assert!(matches!(err, ChainError::NotRegistered { .. }), "{err:?}");

    chain.add_stake(&addr(0), 300.0).await.unwrap();
    assert_eq!(chain.add_stake(&addr(1), 50.0).await.unwrap(), 50.0);
    assert_eq!(chain.add_stake(&addr(1), 50.0).await.unwrap(), 100.0);
    assert!(chain.add_stake(&addr(1), -1.0).await.is_err());
    wait_blocks(&chain, 1).await;

    chain
        .set_weights(&key(0), NETUID, &[2], &[65535], 2002)
        .await
        .unwrap();
    let g = chain.metagraph(NETUID).await.unwrap();
    let inc: Vec<f64> = g.neurons.iter().map(|n| n.incentive).collect();
    assert_eq!(inc, vec![0.0, 0.0, 1.0, 0.0]);
    let permits: Vec<bool> = g.neurons.iter().map(|n| n.validator_permit).collect();
    assert_eq!(permits, vec![true, true, false, false]);
    assert_eq!(g.neurons[0].stake, 300.0);

    // uid 1 (stake 100) splits 1:3 between uids 2 and 3:
    // incentive_2 = (300*1 + 100*0.25)/400, incentive_3 = 100*0.75/400.
    chain
        .set_weights(&key(1), NETUID, &[2, 3], &[100, 300], 2002)
        .await
        .unwrap();
    let g = chain.metagraph(NETUID).await.unwrap();
    assert!(
        (g.neurons[2].incentive - 325.0 / 400.0).abs() < 1e-12,
        "{:?}",
        g.neurons
    );
    assert!(
        (g.neurons[3].incentive - 75.0 / 400.0).abs() < 1e-12,
        "{:?}",
        g.neurons
    );

    let err = chain
        .set_weights(&key(0), NETUID, &[3], &[1], 2002)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ChainError::RateLimited(m) if m.contains("allowed in")),
        "{err:?}"
    );
    let err = chain
        .set_weights(&key(1), NETUID, &[7], &[1], 2002)
        .await
        .unwrap_err();
    assert!(matches!(err, ChainError::Rejected(_)), "{err:?}");
    assert_eq!(
        chain.weights(NETUID).await.unwrap()[0],
        (0, vec![(2, 65535)])
    );
}

#[test]
fn threads_with_their_own_connections_write_and_read_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let chain = open(&dir, 0.01);
        let params = SubnetParams {
            commit_rate_limit: 0,
            ..SubnetParams::default()
        };
        chain.create_subnet(NETUID, params).await.unwrap();
    });
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let chain = open(&dir, 0.01);
                    for k in 0..10u8 {
                        let i = t * 10 + k;
                        chain
                            .register(NETUID, &addr(i), &addr(200 + t))
                            .await
                            .unwrap();
                        chain
                            .commit(&key(i), NETUID, format!("m{i}").as_bytes())
                            .await
                            .unwrap();
                        let g = chain.metagraph(NETUID).await.unwrap();
                        assert!(g.neurons.iter().any(|n| n.hotkey == addr(i)));
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    rt.block_on(async {
        let chain = open(&dir, 0.01);
        let g = chain.metagraph(NETUID).await.unwrap();
        let uids: Vec<u16> = g.neurons.iter().map(|n| n.uid).collect();
        assert_eq!(uids, (0..40).collect::<Vec<u16>>());
        let mut hotkeys: Vec<String> = g.neurons.iter().map(|n| n.hotkey.clone()).collect();
        hotkeys.sort();
        let mut expected: Vec<String> = (0..40u8).map(addr).collect();
        expected.sort();
        assert_eq!(hotkeys, expected);
        for i in 0..40u8 {
            let c = chain.commitment(NETUID, &addr(i)).await.unwrap().unwrap();
            assert_eq!(c.data, format!("m{i}").into_bytes());
        }
    });
}

const CHILD_DIR_ENV: &str = "PRETRAIN_TEST_CHAIN_CHILD_DIR";

// Run as a child process by the crash test: writes until killed.
#[test]
#[ignore = "run as a child process by process_killed_mid_write_leaves_the_chain_readable"]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let chain = open(Path::new(&dir), 0.01);
        let mut i: u8 = 0;
        loop {
            chain.register(NETUID, &addr(i), &addr(250)).await.unwrap();
            chain.add_stake(&addr(i), 1.0).await.unwrap();
            chain.commit(&key(i), NETUID, &[i; 100]).await.unwrap();
            i = i.wrapping_add(1);
        }
    });
}

#[tokio::test]
async fn process_killed_mid_write_leaves_the_chain_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = open(tmp.path(), 0.01);
    chain
        .create_subnet(
            NETUID,
            SubnetParams {
                max_uids: 64,
                commit_rate_limit: 0,
                ..SubnetParams::default()
            },
        )
        .await
        .unwrap();
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--ignored", "--nocapture"])
            .env(CHILD_DIR_ENV, tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let it write for a while, then SIGKILL it wherever it is.
        let start = Instant::now();
        let before = total_stake(tmp.path());
        while total_stake(tmp.path()) < before + 5.0 && start.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(37 * (round + 1))).await;
        child.kill().unwrap();
        child.wait().unwrap();

        // A fresh connection reads a consistent chain and can write to it.
        let after = open(tmp.path(), 0.01);
        let g = after.metagraph(NETUID).await.unwrap();
        assert!(
            total_stake(tmp.path()) >= before + 5.0,
            "round {round}: the child wrote too little"
        );
        assert!(!g.neurons.is_empty());
        let uids: Vec<u16> = g.neurons.iter().map(|n| n.uid).collect();
        assert_eq!(uids, (0..g.neurons.len() as u16).collect::<Vec<_>>());
        for c in after.commitments(NETUID).await.unwrap() {
            assert_eq!(c.data.len(), 100);
        }
        after.add_stake(&addr(1), 1.0).await.unwrap();
        let conn = rusqlite_check(tmp.path());
        assert_eq!(conn, "ok");
    }
}

// The child adds 1.0 stake per loop: its progress.
fn total_stake(dir: &Path) -> f64 {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row("SELECT COALESCE(SUM(stake), 0.0) FROM stakes", [], |r| {
        r.get(0)
    })
    .unwrap()
}

// SQLite's own consistency check of the file.
fn rusqlite_check(dir: &Path) -> String {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// A block time that makes block numbers overflow (1e-300),
/// or is not a usable number, is refused before anything is written, and the
/// directory stays usable for the next command.
#[tokio::test]
async fn absurd_block_times_are_refused_and_leave_the_directory_usable() {
    let tmp = tempfile::tempdir().unwrap();
    for bt in [1e-300, 0.0, -1.0, f64::NAN, f64::INFINITY, 1e300, 1e-4] {
        let err = EmbeddedChain::open(
            tmp.path(),
            &EmbeddedOptions {
                block_time: Some(bt),
                ..EmbeddedOptions::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, ChainError::Rejected(ref m) if m.contains("block time")),
            "{bt}: {err}"
        );
        assert!(!tmp.path().join(DB_FILE).exists(), "{bt} created the file");
    }
    // The same directory then works.
    let chain = open(tmp.path(), 0.001);
    let r = chain.register(NETUID, &addr(1), &addr(2)).await.unwrap();
    assert_eq!(r.uid, 0);
    assert!(chain.current_block().await.unwrap() < 1u64 << 62);
    assert_eq!(
        chain.metagraph(NETUID).await.unwrap().neurons[0].hotkey,
        addr(1)
    );
}

/// Stake is bounded (no infinity after two 1e308s), and only
/// a registered hotkey can be staked.
#[tokio::test]
async fn stake_is_bounded_and_needs_a_registered_hotkey() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = open(tmp.path(), 12.0);
    // Unregistered: refused (the reproduction), also before any subnet exists.
    let e = chain.add_stake(&addr(1), 10.0).await.unwrap_err();
    assert!(e.to_string().contains("not registered"), "{e}");
    chain.register(NETUID, &addr(1), &addr(9)).await.unwrap();
    let e = chain.add_stake(&addr(2), 10.0).await.unwrap_err();
    assert!(e.to_string().contains("not registered"), "{e}");
    // 1e308 once is over the supply already; twice can never reach infinity.
    for amount in [1e308, f64::INFINITY, f64::NAN, -5.0, 0.0, 21_000_000.5] {
        assert!(
            matches!(
                chain.add_stake(&addr(1), amount).await,
                Err(ChainError::Rejected(_))
            ),
            "{amount}"
        );
    }
    assert_eq!(
        chain.add_stake(&addr(1), 20_000_000.0).await.unwrap(),
        20_000_000.0
    );
    // The sum may not pass the supply either.
    let e = chain.add_stake(&addr(1), 1_000_001.0).await.unwrap_err();
    assert!(e.to_string().contains("total supply"), "{e}");
    assert_eq!(
        chain.add_stake(&addr(1), 1_000_000.0).await.unwrap(),
        21_000_000.0
    );
    let g = chain.metagraph(NETUID).await.unwrap();
    assert_eq!(g.neurons[0].stake, 21_000_000.0);
}

/// Opening for reading never creates a chain (a typo in
/// `--chain_dir` is an error, not a new empty chain), whether the directory
/// is missing or empty.
#[tokio::test]
async fn opening_an_existing_chain_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let e = EmbeddedChain::open_existing(&missing, &EmbeddedOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no embedded chain"), "{e}");
    assert!(!missing.exists());
    let e = EmbeddedChain::open_existing(tmp.path(), &EmbeddedOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no embedded chain"), "{e}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    // Through `connect`, as every reading command does.
    let opts = pretrain_chain::ChainOptions {
        chain_dir: missing.clone(),
        ..pretrain_chain::ChainOptions::default()
    };
    assert!(pretrain_chain::connect(&opts).await.is_err());
    assert!(!missing.exists());
    // Once made, it opens.
    open(&missing, 12.0);
    EmbeddedChain::open_existing(&missing, &EmbeddedOptions::default()).unwrap();
}

/// A call that reports a timeout never lands later. Another
/// connection holds the write lock past the call's limit; the call fails with a
/// timeout (after its limit, not at once) and, once the lock is gone, nothing
/// of it is in the file.
#[tokio::test]
async fn a_timed_out_call_never_lands() {
    let tmp = tempfile::tempdir().unwrap();
    open(tmp.path(), 12.0)
        .create_subnet(NETUID, SubnetParams::default())
        .await
        .unwrap();
    let chain = EmbeddedChain::open(
        tmp.path(),
        &EmbeddedOptions {
            block_time: None,
            call_timeout: Duration::from_millis(300),
        },
    )
    .unwrap();
    let blocker = rusqlite::Connection::open(tmp.path().join(DB_FILE)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let t0 = Instant::now();
    let e = chain
        .register(NETUID, &addr(1), &addr(2))
        .await
        .unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(e, ChainError::Timeout(d) if d == Duration::from_millis(300)),
        "{e}"
    );
    assert!(took >= Duration::from_millis(290), "gave up after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    blocker.execute_batch("COMMIT").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(chain.metagraph(NETUID).await.unwrap().neurons.is_empty());
    // The chain is fine afterwards.
    assert_eq!(
        chain
            .register(NETUID, &addr(1), &addr(2))
            .await
            .unwrap()
            .uid,
        0
    );
}

const CHILD_REGISTER_ENV: &str = "PRETRAIN_TEST_CHAIN_REGISTER";

// Run as a child process by the many-processes test: opens the (maybe fresh)
// chain, registers one hotkey and commits, then exits.
#[test]
#[ignore = "run as a child process by many_processes_on_a_fresh_chain_never_lose_a_write"]
fn child_register() {
    let Ok(spec) = std::env::var(CHILD_REGISTER_ENV) else {
        return;
    };
    let (dir, i) = spec.rsplit_once('|').unwrap();
    let i: u8 = i.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let chain = EmbeddedChain::open(
            Path::new(dir),
            &EmbeddedOptions {
                block_time: Some(0.01),
                call_timeout: Duration::from_secs(30),
            },
        )
        .unwrap();
        chain.register(NETUID, &addr(i), &addr(200)).await.unwrap();
        chain.add_stake(&addr(i), 1.0).await.unwrap();
        chain.commit(&key(i), NETUID, &[i; 10]).await.unwrap();
    });
}

/// Many processes started at once on a fresh chain
/// directory (no file yet) all get their registration, stake and commitment
/// in; repeated on new directories.
#[tokio::test]
async fn many_processes_on_a_fresh_chain_never_lose_a_write() {
    const PROCS: u8 = 12;
    for round in 0..4 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fresh");
        let children: Vec<_> = (0..PROCS)
            .map(|i| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", "child_register", "--ignored", "--nocapture"])
                    .env(CHILD_REGISTER_ENV, format!("{}|{i}", dir.display()))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: a child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let chain = EmbeddedChain::open_existing(&dir, &EmbeddedOptions::default()).unwrap();
        let g = chain.metagraph(NETUID).await.unwrap();
        let mut got: Vec<String> = g.neurons.iter().map(|n| n.hotkey.clone()).collect();
        got.sort();
        let mut want: Vec<String> = (0..PROCS).map(addr).collect();
        want.sort();
        assert_eq!(got, want, "round {round}");
        assert!(g.neurons.iter().all(|n| n.stake == 1.0));
        assert_eq!(
            chain.commitments(NETUID).await.unwrap().len(),
            PROCS as usize
        );
        assert_eq!(rusqlite_check(&dir), "ok");
    }
}

/// A user who may read the chain but not write it can read
/// it (the metagraph), and cannot change it. Run as `nobody` when the tests
/// run as root (root ignores permissions).
#[tokio::test]
async fn a_reader_without_write_permission_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("chain");
    let chain = open(&dir, 12.0);
    chain.register(NETUID, &addr(1), &addr(2)).await.unwrap();
    chain.register(NETUID, &addr(3), &addr(2)).await.unwrap();
    drop(chain);
    for p in [tmp.path(), dir.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let is_root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    let mut cmd = if is_root.unwrap_or(false) {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(std::env::current_exe().unwrap());
        c
    } else {
        std::process::Command::new(std::env::current_exe().unwrap())
    };
    let out = cmd
        .args(["--exact", "child_reader", "--ignored", "--nocapture"])
        .env(CHILD_READER_ENV, &dir)
        .output()
        .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("READ 2 NEURONS"), "{text}");
    assert!(text.contains("WRITE REFUSED"), "{text}");
}

const CHILD_READER_ENV: &str = "PRETRAIN_TEST_CHAIN_READER";

#[test]
#[ignore = "run as a child process by a_reader_without_write_permission_can_read"]
fn child_reader() {
    let Ok(dir) = std::env::var(CHILD_READER_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let chain =
            EmbeddedChain::open_existing(Path::new(&dir), &EmbeddedOptions::default()).unwrap();
        let g = chain.metagraph(NETUID).await.unwrap();
        println!("READ {} NEURONS", g.neurons.len());
        assert_eq!(g.neurons[1].hotkey, addr(3));
        if chain.register(NETUID, &addr(5), &addr(2)).await.is_err() {
            println!("WRITE REFUSED");
        }
    });
}

//! What the chopsticks tests share: starting chopsticks, the fixture keys, and
//! setup calls made with subxt directly (as an operator would with btcli).

#![allow(dead_code)] // each test binary uses part of it

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pretrain_chain::subtensor::SubtensorChain;
use pretrain_chain::Hotkey;
use subxt::dynamic::Value;
use subxt::ext::scale_value::Composite;
use subxt::transactions::{DynamicPayload, TransactionStatus};
use subxt::utils::AccountId32;
use subxt::{OnlineClient, SubstrateConfig};
use subxt_signer::sr25519::Keypair;

/// The repository's test data.
pub const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata");
/// The fixture coldkey's mini secret (testdata/wallet/README.md; test data only).
pub const COLDKEY_SEED: &str = "4ed8d4b17698ddeaa1f1559f152f87b5d472f725ca86d341bd0276f1b61197e2";
/// Its address.
pub const COLDKEY_SS58: &str = "5EPCUjPxiHAcNooYipQFWr9NmmXJKpNG5RhcntXwbtUySrgH";

/// Kills the chopsticks process group when the test ends, however it ends.
pub struct Chopsticks(pub Child);

impl Drop for Chopsticks {
    fn drop(&mut self) {
        let pgid = self.0.id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(format!("-{pgid}"))
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program args... --genesis <genesis> --timestamp <now on a whole slot> --port <port>`
/// in its own process group, logging to `chopsticks-<port>.log` in the temp dir.
pub fn start_chopsticks_with(
    program: &str,
    args: &[String],
    envs: &[(&str, String)],
    genesis: &str,
    slot_ms: u128,
    port: u16,
) -> Chopsticks {
    use std::os::unix::process::CommandExt;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    // Aura only accepts a timestamp on a whole slot.
    let timestamp = now_ms / slot_ms * slot_ms;
    let log = std::fs::File::create(std::env::temp_dir().join(format!("chopsticks-{port}.log")))
        .expect("log file");
    let child = Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .arg("--genesis")
        .arg(genesis)
        .arg("--timestamp")
        .arg(timestamp.to_string())
        .arg("--port")
        .arg(port.to_string())
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    Chopsticks(child)
}

/// Chopsticks 1.5.1 as `PRETRAIN_CHOPSTICKS` says (default through npx), on the
/// spec-218 runtime of `raonet.json`.
pub fn start_chopsticks(port: u16) -> Chopsticks {
    let cmd = std::env::var("PRETRAIN_CHOPSTICKS")
        .unwrap_or_else(|_| "npx --yes @acala-network/chopsticks@1.5.1".to_string());
    let mut parts = cmd.split_whitespace();
    let program = parts.next().expect("PRETRAIN_CHOPSTICKS is empty");
    let args: Vec<String> = parts.map(String::from).collect();
    start_chopsticks_with(
        program,
        &args,
        &[],
        &format!("{REF}/chain/raonet.json"),
        3000,
        port,
    )
}

/// Waits until our backend connects (chopsticks compiles the runtime first: ~40 s).
pub async fn connect(url: &str) -> SubtensorChain {
    let started = Instant::now();
    loop {
        match SubtensorChain::connect(url, pretrain_core::constants::CHAIN_CALL_TIMEOUT).await {
            Ok(c) => return c,
            Err(e) if started.elapsed() < Duration::from_secs(240) => {
                eprintln!("waiting for chopsticks: {e}");
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Err(e) => panic!(
                "chopsticks did not come up (log in {:?}): {e}",
                std::env::temp_dir()
            ),
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn fixture_hotkey() -> Hotkey {
    let text = std::fs::read_to_string(format!("{REF}/wallet/fixture/hotkeys/default"))
        .expect("fixture hotkey");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let seed: [u8; 32] = hex::decode(
        json["secretSeed"]
            .as_str()
            .expect("seed")
            .trim_start_matches("0x"),
    )
    .expect("hex")
    .try_into()
    .expect("32 bytes");
    Hotkey::from_secret_seed(json["ss58Address"].as_str().expect("ss58"), seed)
}

pub fn keypair(seed_hex: &str) -> Keypair {
    let seed: [u8; 32] = hex::decode(seed_hex)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    Keypair::from_secret_key(seed).expect("keypair")
}

pub fn ss58(pair: &Keypair) -> String {
    AccountId32(pair.public_key().0).to_string()
}

/// A dynamic call.
pub type Call = DynamicPayload<Composite<()>>;

pub fn call(pallet: &str, name: &str, fields: Vec<(&str, Value)>) -> Call {
    subxt::dynamic::tx(pallet, name, Composite::named(fields))
}

pub fn sudo(inner: Call) -> Call {
    call("Sudo", "sudo", vec![("call", inner.into_value())])
}

/// Submits a setup call and waits for it to be in a block; panics if it failed.
pub async fn submit(
    client: &OnlineClient<SubstrateConfig>,
    tx: &Call,
    signer: &Keypair,
) -> Vec<(String, Composite<()>)> {
    let at = client.at_current_block().await.expect("at block");
    let mut progress = at
        .transactions()
        .sign_and_submit_then_watch_default(tx, signer)
        .await
        .unwrap_or_else(|e| panic!("{}.{}: {e}", tx.pallet_name(), tx.call_name()));
    while let Some(status) = progress.next().await {
        match status.expect("status") {
            TransactionStatus::InBestBlock(b) | TransactionStatus::InFinalizedBlock(b) => {
                let events = b
                    .wait_for_success()
                    .await
                    .unwrap_or_else(|e| panic!("{}.{}: {e}", tx.pallet_name(), tx.call_name()));
                return events
                    .iter()
                    .map(|ev| {
                        let ev = ev.expect("event");
                        let fields = ev
                            .decode_fields_unchecked_as::<Composite<()>>()
                            .unwrap_or_else(|_| Composite::unnamed(Vec::new()));
                        (format!("{}.{}", ev.pallet_name(), ev.event_name()), fields)
                    })
                    .collect();
            }
            TransactionStatus::Invalid { message }
            | TransactionStatus::Error { message }
            | TransactionStatus::Dropped { message } => {
                panic!("{}.{}: {message}", tx.pallet_name(), tx.call_name())
            }
            _ => {}
        }
    }
    panic!(
        "{}.{}: status stream ended",
        tx.pallet_name(),
        tx.call_name()
    );
}

pub fn u(x: u64) -> Value {
    Value::u128(x.into())
}

pub fn account_value(pair: &Keypair) -> Value {
    Value::from_bytes(pair.public_key().0)
}

/// The netuid of the `SubtensorModule.NetworkAdded` event among `events`.
pub fn added_netuid(events: &[(String, Composite<()>)]) -> u16 {
    use subxt::dynamic::At;
    events
        .iter()
        .find(|(name, _)| name == "SubtensorModule.NetworkAdded")
        .and_then(|(_, v)| v.at(0))
        .and_then(|v| v.as_u128())
        .map(|n| n as u16)
        .unwrap_or_else(|| {
            panic!(
                "no NetworkAdded event in {:?}",
                events.iter().map(|e| &e.0).collect::<Vec<_>>()
            )
        })
}

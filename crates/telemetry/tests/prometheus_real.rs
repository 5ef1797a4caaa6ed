//! Debian's real Prometheus scraping our endpoint (scrape interval 1 s, data
//! in a temporary folder): `/api/v1/query` sees the strong miner's weight as
//! the largest, and `promtool check metrics` accepts the exposition. Needs
//! `prometheus` and `promtool` on PATH (`.ci/run` installs Debian's).

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pretrain_telemetry::prometheus::{serve, Outcome, ValidatorMetrics};
use prometheus::Registry;
use serde_json::Value;

/// Kills the child when the test ends, whatever way it ends.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus and promtool on PATH (Debian's prometheus; .ci/run installs it)"]
async fn real_prometheus_scrapes_the_validator_and_sees_the_strong_miner_on_top() {
    let registry = Registry::new();
    let metrics = ValidatorMetrics::new(&registry).unwrap();
    metrics.record_uid(1, 7.5, 0.0, 0.05);
    metrics.record_uid(2, 3.25, 1.0, 0.9);
    metrics.record_uid(3, f64::INFINITY, 0.0, 0.05);
    metrics.step.set(4);
    metrics.models_evaluated.inc_by(12);
    metrics.refused("hash");
    metrics.weights_outcome(Outcome::Set);
    let addr = serve("127.0.0.1:0".parse().unwrap(), registry)
        .await
        .unwrap();

    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: validator\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = Child(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query =
        format!("http://127.0.0.1:{port}/api/v1/query?query=topk(1,pretrain_validator_weight)");
    let started = Instant::now();
    let top = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "prometheus scraped nothing in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(answer) = reqwest::get(&query).await else {
            continue;
        };
        let Ok(v) = answer.json::<Value>().await else {
            continue;
        };
        if let Some(first) = v.pointer("/data/result/0") {
            break first.clone();
        }
    };
    assert_eq!(top["metric"]["uid"], Value::from("2"), "{top}");
    assert_eq!(top["metric"]["job"], Value::from("validator"));
    assert_eq!(top["value"][1], Value::from("0.9"));
}

//! A Prometheus endpoint (`--metrics.port`): the validator's and the miner's
//! figures in Prometheus's text exposition format, served on `GET /metrics`
//! by a small HTTP/1.1 responder (one request per connection, bounded reads
//! and a time limit), so nothing a scraper sends can hold the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The registry metrics are kept in (re-exported: callers need no other crate).
pub use prometheus::Registry;
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Why metrics could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric could not be made or registered (a name clash: a bug).
    #[error("metrics registry: {0}")]
    Registry(#[from] prometheus::Error),
    /// The endpoint could not listen.
    #[error("cannot listen for Prometheus on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// What happened to weights or a push.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Set directly on the chain.
    Set,
    /// Committed (commit-reveal), to be revealed later.
    Committed,
    /// Pushed (miner).
    Pushed,
    /// Failed.
    Failed,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Set => "set",
            Outcome::Committed => "committed",
            Outcome::Pushed => "pushed",
            Outcome::Failed => "failed",
        }
    }
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
) -> Result<GaugeVec, MetricsError> {
    let g = GaugeVec::new(Opts::new(name, help), &[label])?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<Gauge, MetricsError> {
    let g = Gauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// The validator's metrics (`pretrain_validator_*`).
#[derive(Clone)]
pub struct ValidatorMetrics {
    /// Mean loss of each uid at its last evaluation (+Inf: it failed).
    pub average_loss: GaugeVec,
    /// Win rate of each uid at its last evaluation.
    pub win_rate: GaugeVec,
    /// Each uid's weight after the last step.
    pub weight: GaugeVec,
    /// The validator's global step.
    pub step: IntGauge,
    /// The chain block at the last step.
    pub block: IntGauge,
    /// Wall time of the last step.
    pub step_duration_seconds: Gauge,
    /// Models evaluated, all steps together.
    pub models_evaluated: IntCounter,
    /// Models refused, by reason.
    pub models_refused: IntCounterVec,
    /// Weight updates by outcome (set, committed, failed).
    pub weights: IntCounterVec,
}

impl ValidatorMetrics {
    /// Makes the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, MetricsError> {
        Ok(ValidatorMetrics {
            average_loss: gauge_vec(
                registry,
                "pretrain_validator_average_loss",
                "Mean loss of each uid at its last evaluation (+Inf: failed)",
                "uid",
            )?,
            win_rate: gauge_vec(
                registry,
                "pretrain_validator_win_rate",
                "Win rate of each uid at its last evaluation",
                "uid",
            )?,
            weight: gauge_vec(
                registry,
                "pretrain_validator_weight",
                "Weight of each uid after the last step",
                "uid",
            )?,
            step: int_gauge(
                registry,
                "pretrain_validator_step",
                "The validator's global step",
            )?,
            block: int_gauge(
                registry,
                "pretrain_validator_block",
                "Chain block at the last step",
            )?,
            step_duration_seconds: gauge(
                registry,
                "pretrain_validator_step_duration_seconds",
                "Wall time of the last step",
            )?,
            models_evaluated: counter(
                registry,
                "pretrain_validator_models_evaluated_total",
                "Models evaluated",
            )?,
            models_refused: counter_vec(
                registry,
                "pretrain_validator_models_refused_total",
                "Models refused, by reason",
                "reason",
            )?,
            weights: counter_vec(
                registry,
                "pretrain_validator_weights_total",
                "Weight updates by outcome",
                "outcome",
            )?,
        })
    }

    /// Records one uid's result.
    pub fn record_uid(&self, uid: u16, average_loss: f64, win_rate: f64, weight: f64) {
        let uid = uid.to_string();
        self.average_loss
            .with_label_values(&[&uid])
            .set(average_loss);
        self.win_rate.with_label_values(&[&uid]).set(win_rate);
        self.weight.with_label_values(&[&uid]).set(weight);
    }

    /// Counts a refusal (`reason`: a short fixed word such as `hash`).
    pub fn refused(&self, reason: &str) {
        self.models_refused.with_label_values(&[reason]).inc();
    }

    /// Counts a weight update.
    pub fn weights_outcome(&self, outcome: Outcome) {
        self.weights.with_label_values(&[outcome.as_str()]).inc();
    }
}

/// The miner's metrics (`pretrain_miner_*`).
#[derive(Clone)]
pub struct MinerMetrics {
    /// Loss at the last optimizer step.
    pub loss: Gauge,
    /// Training throughput over the last optimizer step.
    pub tokens_per_second: Gauge,
    /// Epochs finished.
    pub epochs: IntCounter,
    /// Pushes by outcome (pushed, failed).
    pub pushes: IntCounterVec,
}

impl MinerMetrics {
    /// Makes the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, MetricsError> {
        Ok(MinerMetrics {
            loss: gauge(
                registry,
                "pretrain_miner_loss",
                "Loss at the last optimizer step",
            )?,
            tokens_per_second: gauge(
                registry,
                "pretrain_miner_tokens_per_second",
                "Training throughput over the last optimizer step",
            )?,
            epochs: counter(registry, "pretrain_miner_epochs_total", "Epochs finished")?,
            pushes: counter_vec(
                registry,
                "pretrain_miner_pushes_total",
                "Pushes by outcome",
                "outcome",
            )?,
        })
    }
}

/// The registry's text exposition.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into a Vec fails only on a malformed family (a bug): then
    // the scrape gets what was written, never a crash.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    // The encoder writes Rust's `inf`; the exposition format spells it `+Inf`.
    String::from_utf8_lossy(&out)
        .lines()
        .map(|line| match line.strip_suffix(" inf") {
            Some(sample) if !line.starts_with('#') => format!("{sample} +Inf\n"),
            _ => match line.strip_suffix(" -inf") {
                Some(sample) if !line.starts_with('#') => format!("{sample} -Inf\n"),
                _ => format!("{line}\n"),
            },
        })
        .collect()
}

/// Connections served at once; a scraper needs one, so the rest are
/// dropped on accept rather than each holding a file descriptor the
/// validator needs for its workers, its state and its logs.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send its request head: a scraper sends it
/// at once, so a half-sent request is a stalled or hostile client.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long writing the answer may take once the head has been read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `addr` from a task on the current runtime;
/// returns the bound address (port 0 picks a free one). At most
/// [`MAX_CONNECTIONS`] are served at once (the excess is closed at once),
/// and a request head must arrive within [`READ_TIMEOUT`].
pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<SocketAddr, MetricsError> {
    serve_bounded(addr, registry, MAX_CONNECTIONS, READ_TIMEOUT).await
}

/// [`serve`] with its bounds given (tests hold them apart).
async fn serve_bounded(
    addr: SocketAddr,
    registry: Registry,
    max_connections: usize,
    read_timeout: Duration,
) -> Result<SocketAddr, MetricsError> {
    let listen = |source| MetricsError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen)?;
    let bound = listener.local_addr().map_err(listen)?;
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: wait, then accept again.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Full: closing it now frees its descriptor at once.
                drop(stream);
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let respond = async {
                    let request = tokio::time::timeout(read_timeout, read_head(&mut stream))
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                    let (status, body) = answer(&request, &registry);
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let write = async {
                        stream.write_all(head.as_bytes()).await?;
                        stream.write_all(body.as_bytes()).await?;
                        stream.shutdown().await
                    };
                    tokio::time::timeout(WRITE_TIMEOUT, write)
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
                };
                let _: std::io::Result<()> = respond.await;
            });
        }
    });
    Ok(bound)
}

/// Reads a request head (at most 8 KiB).
async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn answer(request: &str, registry: &Registry) -> (&'static str, String) {
    let mut words = request.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => ("200 OK", render(registry)),
        ("GET", _) => ("404 Not Found", "see /metrics\n".into()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validator_series_render_with_labels_types_and_inf() {
        let registry = Registry::new();
        let metrics = ValidatorMetrics::new(&registry).unwrap();
        metrics.record_uid(3, 2.5, 1.0, 0.75);
        metrics.record_uid(4, f64::INFINITY, 0.0, 0.25);
        metrics.refused("hash");
        metrics.weights_outcome(Outcome::Committed);
        metrics.step.set(12);
        let text = render(&registry);
        assert!(
            text.contains("# TYPE pretrain_validator_weight gauge"),
            "{text}"
        );
        assert!(
            text.contains("pretrain_validator_weight{uid=\"3\"} 0.75"),
            "{text}"
        );
        assert!(
            text.contains("pretrain_validator_average_loss{uid=\"4\"} +Inf"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE pretrain_validator_models_refused_total counter"),
            "{text}"
        );
        assert!(
            text.contains("pretrain_validator_models_refused_total{reason=\"hash\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pretrain_validator_weights_total{outcome=\"committed\"} 1"),
            "{text}"
        );
        assert!(text.contains("pretrain_validator_step 12"), "{text}");
    }

    use tokio::net::TcpStream;

    /// Sends `request` on a new connection and reads until the server closes it.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The server may have closed it already: then the write can fail.
        let _ = stream.write_all(request).await;
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Opens a connection that sends half a request head and then waits,
    /// and returns once the server has accepted it (it answers nothing yet).
    async fn stall(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        stream
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_bound_are_closed_at_once_and_slots_come_back() {
        let registry = Registry::new();
        ValidatorMetrics::new(&registry).unwrap().step.set(7);
        // A read timeout far beyond the test, so only the bound can close them.
        let addr = serve_bounded(
            "127.0.0.1:0".parse().unwrap(),
            registry,
            4,
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        let mut stalled = Vec::new();
        for _ in 0..4 {
            stalled.push(stall(addr).await);
        }
        // Accepted in order: these four hold every slot, so a fifth full
        // request, and a flood after it, is closed without an answer.
        for _ in 0..50 {
            assert_eq!(exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await, "");
        }
        // One staller finishing its request is answered (it held a slot).
        let mut first = stalled.remove(0);
        first.write_all(b"\r\n").await.unwrap();
        let mut out = Vec::new();
        first.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("pretrain_validator_step 7"), "{text}");
        // Its slot is free again: the next scraper is answered.
        let text = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(text.contains("pretrain_validator_step 7"), "{text}");
        // Closing the stallers frees their slots: four new stallers are
        // accepted again, and the last of them is answered.
        drop(stalled);
        let mut again = None;
        for _ in 0..500 {
            let mut held = Vec::new();
            for _ in 0..4 {
                held.push(stall(addr).await);
            }
            let mut last = held.pop().unwrap();
            let _ = last.write_all(b"\r\n").await;
            let mut out = Vec::new();
            let _ = last.read_to_end(&mut out).await;
            if !out.is_empty() {
                again = Some(String::from_utf8_lossy(&out).into_owned());
                break;
            }
            // The server has not seen the old ones close yet.
            drop(held);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let again = again.expect("the slots of closed connections never came back");
        assert!(again.contains("pretrain_validator_step 7"), "{again}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_half_sent_request_is_closed_by_the_read_timeout() {
        let registry = Registry::new();
        ValidatorMetrics::new(&registry).unwrap().step.set(3);
        let addr = serve_bounded(
            "127.0.0.1:0".parse().unwrap(),
            registry,
            1,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        let mut staller = stall(addr).await;
        // We never close it nor finish it: only the server's timeout can end
        // this read (the outer timeout only keeps a broken build from hanging).
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(120), staller.read_to_end(&mut out))
            .await
            .expect("the server never closed a half-sent request");
        assert!(read.is_ok() || out.is_empty());
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        // The single slot it held is free: a scraper is answered.
        let text = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(text.contains("pretrain_validator_step 3"), "{text}");
    }

    #[test]
    fn only_get_metrics_is_answered() {
        let registry = Registry::new();
        assert_eq!(
            answer("GET /metrics HTTP/1.1\r\n\r\n", &registry).0,
            "200 OK"
        );
        assert_eq!(
            answer("GET /metrics?x=1 HTTP/1.1\r\n\r\n", &registry).0,
            "200 OK"
        );
        assert_eq!(
            answer("GET / HTTP/1.1\r\n\r\n", &registry).0,
            "404 Not Found"
        );
        assert_eq!(
            answer("POST /metrics HTTP/1.1\r\n\r\n", &registry).0,
            "405 Method Not Allowed"
        );
        assert_eq!(answer("", &registry).0, "405 Method Not Allowed");
    }
}

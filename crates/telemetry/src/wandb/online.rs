//! Online runs: W&B's HTTP protocol as its SDK speaks it.
//!
//! - `POST {base}/graphql`, basic auth `api:<key>`: the `UpsertBucket`
//!   mutation creates the run (`name` is our run id, `displayName` what
//!   dashboards match, `config` a JSON string of `{key: {"value": v}}`).
//! - `POST {base}/files/{entity}/{project}/{run}/file_stream`:
//!   `{"files": {"wandb-history.jsonl": {"offset": n, "content": [lines]},
//!   "wandb-summary.json": {"offset": 0, "content": [summary]}}, "dropped": d}`,
//!   where `n` is the line number of the first line sent (the count the
//!   server has accepted before); finally `{"complete": true, "exitcode": c}`.
//!
//! All of it runs in a background task: the caller's `log` only queues a line.
//! A failed request leaves the lines queued and is retried with a growing
//! delay (at most a minute), from the same offset, so the server's file has
//! no gap and no duplicate.

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::{RunSpec, WandbError};

/// The `UpsertBucket` mutation, with the variables wandb's SDK declares.
pub const UPSERT_BUCKET: &str = "mutation UpsertBucket($id: String, $name: String, $project: String, $entity: String, $groupName: String, $description: String, $displayName: String, $notes: String, $commit: String, $config: JSONString, $host: String, $debug: Boolean, $program: String, $repo: String, $jobType: String, $state: String, $sweep: String, $tags: [String!], $summaryMetrics: JSONString) { upsertBucket(input: {id: $id, name: $name, groupName: $groupName, modelName: $project, entityName: $entity, description: $description, displayName: $displayName, notes: $notes, config: $config, commit: $commit, host: $host, debug: $debug, jobProgram: $program, jobRepo: $repo, jobType: $jobType, state: $state, sweep: $sweep, tags: $tags, summaryMetrics: $summaryMetrics}) { bucket { id name displayName description config sweepName project { id name entity { id name } } historyLineCount } inserted } }";

/// History lines kept while the server is unreachable; older ones are
/// dropped first (and counted in `dropped`).
pub const MAX_QUEUED_LINES: usize = 10_000;

/// Timing of an online run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often queued lines are sent.
    pub flush_interval: Duration,
    /// One request's limit.
    pub request_timeout: Duration,
    /// How long `finish` may spend sending what is left.
    pub finish_timeout: Duration,
    /// First delay after a failure (doubles, at most `max_retry_delay`).
    pub retry_delay: Duration,
    /// Longest delay between retries.
    pub max_retry_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flush_interval: Duration::from_secs(2),
            request_timeout: Duration::from_secs(20),
            finish_timeout: Duration::from_secs(30),
            retry_delay: Duration::from_secs(2),
            max_retry_delay: Duration::from_secs(60),
        }
    }
}

enum Msg {
    Line(String),
    Finish {
        exit_code: i32,
        done: oneshot::Sender<Result<(), WandbError>>,
    },
}

/// The caller's end of an online run.
pub struct OnlineRun {
    tx: mpsc::UnboundedSender<Msg>,
}

impl OnlineRun {
    /// Spawns the run's task on the current tokio runtime.
    pub fn spawn(
        base_url: String,
        api_key: String,
        run_id: String,
        spec: RunSpec,
        options: Options,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task::new(base_url, api_key, run_id, spec, options);
        tokio::spawn(task.run(rx));
        OnlineRun { tx }
    }

    /// Queues a history line.
    pub fn history(&self, line: String) {
        // A closed channel means the task ended; nothing to do but drop it.
        let _ = self.tx.send(Msg::Line(line));
    }

    /// Sends what is left and completes the run.
    pub async fn finish(self, exit_code: i32) -> Result<(), WandbError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Finish { exit_code, done })
            .map_err(|_| WandbError::Finished)?;
        wait.await.map_err(|_| WandbError::Finished)?
    }
}

struct Task {
    client: reqwest::Client,
    base_url: String,
    auth: String,
    run_id: String,
    spec: RunSpec,
    options: Options,
    created: bool,
    queued: VecDeque<String>,
    /// Lines the server has accepted: the offset of the first queued line.
    offset: u64,
    dropped: u64,
    summary: Map<String, Value>,
    failures: u32,
}

impl Task {
    fn new(
        base_url: String,
        api_key: String,
        run_id: String,
        spec: RunSpec,
        options: Options,
    ) -> Self {
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("api:{api_key}"))
        );
        let client = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Task {
            client,
            base_url,
            auth,
            run_id,
            spec,
            options,
            created: false,
            queued: VecDeque::new(),
            offset: 0,
            dropped: 0,
            summary: Map::new(),
            failures: 0,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut next_try = tokio::time::Instant::now();
        loop {
            let wait = tokio::time::sleep_until(next_try);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Line(line)) => self.queue(line),
                    Some(Msg::Finish { exit_code, done }) => {
                        let result = self.finish(exit_code).await;
                        let _ = done.send(result);
                        return;
                    }
                    // The run was dropped without finish: send what we can.
                    None => {
                        let _ = self.finish(1).await;
                        return;
                    }
                },
                () = wait => {
                    let delay = match self.step().await {
                        Ok(()) => {
                            self.failures = 0;
                            self.options.flush_interval
                        }
                        Err(e) => {
                            self.failures += 1;
                            let delay = self.retry_delay();
                            // One warning per failure streak, then quieter.
                            if self.failures == 1 {
                                tracing::warn!(error = %e, retry_in_s = delay.as_secs_f64(), queued = self.queued.len(), "W&B unreachable; history kept and resent");
                            } else {
                                tracing::debug!(error = %e, failures = self.failures, "W&B still unreachable");
                            }
                            delay
                        }
                    };
                    next_try = tokio::time::Instant::now() + delay;
                }
            }
        }
    }

    fn queue(&mut self, line: String) {
        if let Ok(Value::Object(row)) = serde_json::from_str::<Value>(&line) {
            self.summary.extend(row);
        }
        self.queued.push_back(line);
        while self.queued.len() > MAX_QUEUED_LINES {
            self.queued.pop_front();
            self.dropped += 1;
        }
    }

    fn retry_delay(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.saturating_sub(1).min(16));
        self.options
            .retry_delay
            .saturating_mul(factor)
            .min(self.options.max_retry_delay)
    }

    /// Creates the run if it is not yet, then sends the queued lines.
    async fn step(&mut self) -> Result<(), WandbError> {
        if !self.created {
            self.upsert().await?;
            self.created = true;
        }
        self.send_history().await
    }

    async fn upsert(&mut self) -> Result<(), WandbError> {
        let config: Map<String, Value> = self
            .spec
            .config
            .iter()
            .map(|(k, v)| (k.clone(), json!({ "value": v })))
            .collect();
        let body = json!({
            "query": UPSERT_BUCKET,
            "variables": {
                "id": null,
                "name": self.run_id,
                "project": self.spec.project,
                "entity": self.spec.entity,
                "groupName": null,
                "description": null,
                "displayName": self.spec.display_name,
                "notes": null,
                "commit": null,
                "config": Value::Object(config).to_string(),
                "host": super::host_name(),
                "debug": false,
                "program": null,
                "repo": null,
                "jobType": null,
                "state": null,
                "sweep": null,
                "tags": null,
                "summaryMetrics": null,
            }
        });
        let url = format!("{}/graphql", self.base_url);
        let answer = self.post(&url, &body).await?;
        if let Some(errors) = answer.get("errors").filter(|e| !e.is_null()) {
            return Err(WandbError::GraphQl(escape(&errors.to_string())));
        }
        if answer.pointer("/data/upsertBucket/bucket").is_none() {
            return Err(WandbError::GraphQl(
                "answer has no data.upsertBucket.bucket".into(),
            ));
        }
        tracing::info!(run = %self.run_id, name = %escape(&self.spec.display_name), project = %escape(&self.spec.project), entity = %escape(&self.spec.entity), "W&B run created");
        Ok(())
    }

    fn stream_url(&self) -> String {
        format!(
            "{}/files/{}/{}/{}/file_stream",
            self.base_url, self.spec.entity, self.spec.project, self.run_id
        )
    }

    async fn send_history(&mut self) -> Result<(), WandbError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        // A request carries at most 1000 lines, as wandb's SDK batches them.
        let n = self.queued.len().min(1000);
        let lines: Vec<&String> = self.queued.iter().take(n).collect();
        let body = json!({
            "files": {
                "wandb-history.jsonl": { "offset": self.offset, "content": lines },
                "wandb-summary.json": {
                    "offset": 0,
                    "content": [Value::Object(self.summary.clone()).to_string()],
                },
            },
            "dropped": self.dropped,
        });
        self.post(&self.stream_url(), &body).await?;
        self.queued.drain(..n);
        self.offset += n as u64;
        Ok(())
    }

    async fn finish(&mut self, exit_code: i32) -> Result<(), WandbError> {
        let deadline = tokio::time::Instant::now() + self.options.finish_timeout;
        let mut last_error = None;
        while tokio::time::Instant::now() < deadline {
            match self.step().await {
                Ok(()) if self.queued.is_empty() => {
                    last_error = None;
                    break;
                }
                Ok(()) => continue,
                Err(e) => {
                    last_error = Some(e);
                    self.failures += 1;
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    tokio::time::sleep(self.retry_delay().min(left)).await;
                }
            }
        }
        if let Some(e) = last_error {
            return Err(e);
        }
        if !self.created {
            return Ok(());
        }
        let body = json!({ "complete": true, "exitcode": exit_code, "dropped": self.dropped, "uploaded": [] });
        self.post(&self.stream_url(), &body).await.map(|_| ())
    }

    async fn post(&self, url: &str, body: &Value) -> Result<Value, WandbError> {
        let transport = |e: reqwest::Error| WandbError::Transport {
            url: url.to_string(),
            message: escape(&e.to_string()),
        };
        let response = self
            .client
            .post(url)
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let text = response.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(WandbError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                body: escape(&text.chars().take(300).collect::<String>()),
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Text from a server, safe for one log line: control characters escaped.
fn escape(s: &str) -> String {
    s.chars().flat_map(char::escape_default).collect()
}

//! Test helpers: a fauxqs started once per test binary on a free loopback port, SQS clients
//! with explicit endpoint and dummy credentials, fresh randomly named queues, a recording
//! handler, and waits that fail instead of hanging.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
pub use queue_worker::SqsClientKind;
use queue_worker::{Config, Handler, Job, Outcome, Protector, SimulatedJob, Snapshot, Sqs, Stats};
use testkit::fauxqs::Fauxqs;
use tokio_util::sync::CancellationToken;

pub use testkit::fauxqs::repo_root;

/// The shared emulator. Each test uses its own queues, so sharing it is safe.
pub fn fauxqs() -> &'static Fauxqs {
    static F: OnceLock<Fauxqs> = OnceLock::new();
    F.get_or_init(|| Fauxqs::start().unwrap_or_else(|e| panic!("{e}")))
}

/// The dummy credentials of every local client.
pub fn test_credentials() -> Credentials {
    Credentials::new("test", "test", None, None, "tests")
}

pub fn sqs_config(endpoint: &str) -> aws_sdk_sqs::Config {
    aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(test_credentials())
        .endpoint_url(endpoint)
        .http_client(queue_worker::http_client())
        .build()
}

/// AWS settings for `endpoint` with the test region and credentials, as `aws_config()` would
/// load them from the environment.
pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(
            test_credentials(),
        ))
        .endpoint_url(endpoint)
        .http_client(queue_worker::http_client())
        .build()
}

pub fn client() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::from_conf(sqs_config(&fauxqs().endpoint))
}

/// Env vars for a worker process pointed at fauxqs (nothing reaches real AWS).
pub fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", fauxqs().endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

pub async fn create_queue(
    c: &aws_sdk_sqs::Client,
    prefix: &str,
    attrs: &[(QueueAttributeName, String)],
) -> String {
    let mut req = c.create_queue().queue_name(unique(prefix));
    for (k, v) in attrs {
        req = req.attributes(k.clone(), v);
    }
    req.send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url")
}

/// A FIFO queue with content-based deduplication.
pub async fn create_fifo_queue(c: &aws_sdk_sqs::Client, prefix: &str) -> String {
    c.create_queue()
        .queue_name(format!("{}.fifo", unique(prefix)))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "true")
        .send()
        .await
        .expect("create fifo queue")
        .queue_url
        .expect("queue url")
}

pub async fn queue_arn(c: &aws_sdk_sqs::Client, url: &str) -> String {
    let out = c
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("arn");
    out.attributes
        .unwrap_or_default()
        .remove(&QueueAttributeName::QueueArn)
        .expect("QueueArn")
}

/// A queue whose redrive policy moves a message to a fresh DLQ after `max_receives`.
pub async fn queue_with_redrive(c: &aws_sdk_sqs::Client, max_receives: u32) -> (String, String) {
    let dlq = create_queue(c, "dlq", &[]).await;
    let arn = queue_arn(c, &dlq).await;
    let policy = format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max_receives}"}}"#);
    let q = create_queue(c, "q", &[(QueueAttributeName::RedrivePolicy, policy)]).await;
    (q, dlq)
}

/// Sends `bodies` with SendMessageBatch, 10 per request; returns the message ids in order.
pub async fn send_bodies<S: AsRef<str>>(
    c: &aws_sdk_sqs::Client,
    url: &str,
    bodies: &[S],
) -> Vec<String> {
    let mut ids = Vec::with_capacity(bodies.len());
    for chunk in bodies.chunks(10) {
        let mut req = c.send_message_batch().queue_url(url);
        for (i, b) in chunk.iter().enumerate() {
            req = req.entries(
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(b.as_ref())
                    .build()
                    .expect("entry"),
            );
        }
        let out = req.send().await.expect("send batch");
        assert!(out.failed.is_empty(), "send failed: {:?}", out.failed);
        let mut ok = out.successful;
        ok.sort_by_key(|e| e.id.parse::<usize>().expect("numeric id"));
        ids.extend(ok.into_iter().map(|e| e.message_id));
    }
    ids
}

/// The most spans (start, end) that overlap at one moment. Ends sort before starts at the same
/// instant: a slot freed and reused at once is not an overlap.
pub fn most_at_once<T: Ord + Copy>(spans: impl IntoIterator<Item = (T, T)>) -> usize {
    let mut edges: Vec<(T, i32)> = Vec::new();
    for (start, end) in spans {
        edges.push((start, 1));
        edges.push((end, -1));
    }
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// The most recorded jobs that ran at one moment (a job still running counts until now).
pub fn peak_overlap(seen: &[Seen]) -> usize {
    most_at_once(
        seen.iter()
            .map(|s| (s.started, s.ended.unwrap_or_else(SystemTime::now))),
    )
}

/// Messages still in the queue, visible or in flight.
pub async fn still_queued(c: &aws_sdk_sqs::Client, url: &str) -> u64 {
    let (visible, in_flight) = counts(c, url).await;
    visible + in_flight
}

/// (visible, in flight) counts of a queue.
pub async fn counts(c: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let out = c
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("attributes");
    let a = out.attributes.unwrap_or_default();
    let n = |k: QueueAttributeName| a.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        n(QueueAttributeName::ApproximateNumberOfMessages),
        n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Polls `check` every 50 ms until it holds; false after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Config tuned for fast tests: short polls and backoffs, protection off.
pub fn fast_config(queue_url: &str) -> Config {
    let mut c = Config::new(queue_url);
    c.wait_time = Duration::from_secs(1);
    c.shutdown_timeout = Duration::from_secs(5);
    c.retry = queue_worker::Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
    c.delete_linger = Duration::from_millis(5);
    c
}

/// One job as the recording handler saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub message_id: String,
    pub body: String,
    pub receive_count: u32,
    pub started: SystemTime,
    pub ended: Option<SystemTime>,
    pub outcome: Option<Outcome>,
    /// Set by a probe (e.g. "was the task protected at start and end?").
    pub probe: Vec<bool>,
}

/// Wraps the simulated job and records every job; `probe` runs at start and end.
#[derive(Clone)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub probe: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            seen: Arc::default(),
            probe: Arc::new(|| true),
        }
    }
    pub fn with_probe(probe: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self {
            seen: Arc::default(),
            probe: Arc::new(probe),
        }
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
    /// How many times each message id was started.
    pub fn starts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for s in self.seen() {
            *m.entry(s.message_id).or_insert(0) += 1;
        }
        m
    }
    pub fn successes(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.outcome == Some(Outcome::Success))
            .count()
    }
}

impl Handler for Recorder {
    async fn handle(&self, job: Job) -> Outcome {
        let idx = {
            let mut seen = self.seen.lock().expect("lock");
            seen.push(Seen {
                message_id: job.message_id.clone(),
                body: job.body.clone(),
                receive_count: job.receive_count,
                started: SystemTime::now(),
                ended: None,
                outcome: None,
                probe: vec![(self.probe)()],
            });
            seen.len() - 1
        };
        let outcome = SimulatedJob.handle(job).await;
        let mut seen = self.seen.lock().expect("lock");
        let s = &mut seen[idx];
        s.ended = Some(SystemTime::now());
        s.probe.push((self.probe)());
        s.outcome = Some(outcome.clone());
        outcome
    }
}

/// A worker running in this process.
pub struct Running {
    pub shutdown: CancellationToken,
    pub stats: Arc<Stats>,
    pub task: tokio::task::JoinHandle<Result<Snapshot, queue_worker::WorkerError>>,
}

impl Running {
    pub fn snapshot(&self) -> Snapshot {
        self.stats.snapshot()
    }
    /// Signals shutdown and waits (bounded) for the worker to stop.
    pub async fn stop(self) -> Snapshot {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("worker stops within 30 s")
            .expect("worker task")
            .expect("worker result")
    }
}

pub async fn start<H: Handler>(config: Config, protector: Protector, handler: H) -> Running {
    start_through(&fauxqs().endpoint, config, protector, handler).await
}

/// A worker like [`start`], but talking to SQS through `endpoint` (e.g. the fault proxy).
pub async fn start_through<H: Handler>(
    endpoint: &str,
    config: Config,
    protector: Protector,
    handler: H,
) -> Running {
    start_with(endpoint, config, protector, handler, SqsClientKind::Direct).await
}

/// A worker like [`start`], with receives and deletes sent the `kind` way.
pub async fn start_with<H: Handler>(
    endpoint: &str,
    config: Config,
    protector: Protector,
    handler: H,
    kind: SqsClientKind,
) -> Running {
    let sqs = Sqs::connect(&sdk_config(endpoint), kind)
        .await
        .expect("SQS client");
    let stats = sqs.stats();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        queue_worker::run(config, sqs, protector, Arc::new(handler), stop).await
    });
    Running {
        shutdown,
        stats,
        task,
    }
}

/// `GET /health` of the worker serving `addr`.
pub async fn health(addr: std::net::SocketAddr) -> Result<String, String> {
    queue_worker::health_probe(addr).await
}

/// Protection through the agent endpoint of `task`, with 60 s grants held at least `min_hold`.
pub fn agent_protector(
    task: &testkit::agent_double::TaskEndpoint,
    grant: Duration,
    min_hold: Duration,
) -> Protector {
    Protector::agent(
        &task.agent_uri(),
        queue_worker::Timing::new(grant, min_hold),
    )
    .expect("agent client")
}

/// Path of the built worker binary (cargo builds it for integration tests).
pub fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_queue-worker"))
}

/// One receive (1 s long poll) straight from the queue, as another consumer would.
pub async fn receive_now(c: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    c.receive_message()
        .queue_url(url)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default()
}

/// A loopback address that was free a moment ago (for servers that take an address, not a listener).
pub fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Every drill ends by reporting its counts: printed (shown with `--nocapture`) and written to
/// `target/drill-reports/<name>.json`, which `scripts/test.sh` prints as a table at the end.
pub fn report_drill(name: &str, counts: &serde_json::Value) {
    let dir = repo_root().join("target/drill-reports");
    let _ = std::fs::create_dir_all(&dir);
    let line = serde_json::json!({ "drill": name, "counts": counts });
    println!("DRILL {line}");
    let _ = std::fs::write(dir.join(format!("{name}.json")), line.to_string());
}

/// An agent double with one task on it (a fresh task ARN per call).
pub async fn agent_task() -> (
    testkit::agent_double::AgentDouble,
    testkit::agent_double::TaskEndpoint,
) {
    let double = testkit::agent_double::AgentDouble::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("agent double");
    let task = double.add_task(
        "test-cluster",
        &format!("arn:aws:ecs:us-east-1:1:task/test-cluster/{}", unique("t")),
    );
    (double, task)
}

/// A child process that is killed and reaped when dropped, so a test that fails half-way
/// leaves no worker running after the suite.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits (bounded) for a child to exit; kills it and fails if it does not.
pub fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let end = std::time::Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("worker did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! A fault-injecting proxy in front of an SQS-compatible server (test and drill tool).
//!
//! [`FaultProxy::start`] listens on a free loopback port and forwards AWS JSON 1.0 requests
//! (`POST /`, `X-Amz-Target: AmazonSQS.<Operation>`) to the upstream server. For a configurable,
//! seeded share of the requests of eligible operations it injects one fault ([`FaultKind`]):
//! HTTP 500 / 503 with an AWS error body, throttling (HTTP 400 `RequestThrottled` or
//! `ThrottlingException`, both of which the AWS SDK retries as throttling), a slow answer, a
//! dropped connection (request read, never forwarded, socket closed), a lost reply (forwarded and
//! applied, socket closed before the answer), and partial batch failures: for
//! `DeleteMessageBatch` / `ChangeMessageVisibilityBatch` some entries are removed from the request
//! before it is forwarded and reported in the reply's `Failed` list, so the reply is faithful —
//! an entry reported failed really was not applied.
//!
//! The HTTP/1.1 side is hand-rolled on a raw [`TcpListener`] (keep-alive, `Content-Length` and
//! chunked bodies, `Expect: 100-continue`): it is the simplest way to close a connection in the
//! middle of an exchange, which is exactly what two of the faults need.
//!
//! Besides counts of requests and faults ([`FaultProxy::counts`]), the proxy keeps a ledger of
//! the deletes the upstream accepted, each tied to the `ReceiveMessage` answer that handed out its
//! receipt handle ([`FaultProxy::accepted_deletes`]): a drill can then prove that no message was
//! deleted after a failed job.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest request line or header line accepted (a sane HTTP server's limit; SQS sends short ones).
const MAX_HEAD_LINE: u64 = 16 * 1024;
/// Most header lines in one request.
const MAX_HEADERS: usize = 100;
/// Largest request body accepted: a 1 MiB SQS message, JSON-escaped, in a batch of 10, with room.
const MAX_BODY: usize = 32 * 1024 * 1024;
/// How long [`FaultProxy::shutdown`] waits for connections to finish before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// AWS JSON 1.0 content type, for the answers the proxy makes up.
const AMZ_JSON: &str = "application/x-amz-json-1.0";

/// Operations the worker itself calls in its loop: faulted by default. Set-up calls
/// (`CreateQueue`, `GetQueueAttributes`, ...) are left alone unless asked for.
pub const WORKER_OPERATIONS: &[&str] = &[
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
    "SendMessage",
    "SendMessageBatch",
];

/// Why the proxy could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("fault shares are invalid: {0}; each share must be in 0..=1 and together at most 1")]
    Shares(String),
    #[error("upstream URL {0:?} must start with http://")]
    Upstream(String),
    #[error("cannot listen on loopback: {0}")]
    Bind(std::io::Error),
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("connection i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
}

/// The kinds of fault the proxy injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// HTTP 500 `InternalError`, not forwarded.
    ServerError,
    /// HTTP 503 `ServiceUnavailable`, not forwarded.
    Unavailable,
    /// HTTP 400 `RequestThrottled` or `ThrottlingException` (drawn alternately), not forwarded.
    Throttled,
    /// Forwarded after [`FaultConfig::slow_delay`].
    Slow,
    /// Request read, never forwarded; the connection is closed without an answer.
    DroppedRequest,
    /// Forwarded and applied upstream; the connection is closed before the answer.
    LostReply,
    /// Batch operations only: some entries not forwarded, reported in `Failed`.
    PartialBatch,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::ServerError,
        FaultKind::Unavailable,
        FaultKind::Throttled,
        FaultKind::Slow,
        FaultKind::DroppedRequest,
        FaultKind::LostReply,
        FaultKind::PartialBatch,
    ];

    /// Name used in counts and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::ServerError => "http_500",
            FaultKind::Unavailable => "http_503",
            FaultKind::Throttled => "throttled",
            FaultKind::Slow => "slow",
            FaultKind::DroppedRequest => "dropped_request",
            FaultKind::LostReply => "lost_reply",
            FaultKind::PartialBatch => "partial_batch",
        }
    }
}

/// Share of eligible requests that get each fault (0..=1 each, at most 1 together).
/// `partial_batch` applies to batch operations only: for other operations its share of draws
/// passes through unfaulted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shares {
    pub server_error: f64,
    pub unavailable: f64,
    pub throttled: f64,
    pub slow: f64,
    pub dropped_request: f64,
    pub lost_reply: f64,
    pub partial_batch: f64,
}

impl Shares {
    /// No faults: a plain forwarding proxy.
    pub const NONE: Shares = Shares {
        server_error: 0.0,
        unavailable: 0.0,
        throttled: 0.0,
        slow: 0.0,
        dropped_request: 0.0,
        lost_reply: 0.0,
        partial_batch: 0.0,
    };

    /// Only `kind`, for every eligible request it applies to.
    pub fn only(kind: FaultKind) -> Shares {
        let mut s = Shares::NONE;
        *s.share_mut(kind) = 1.0;
        s
    }

    pub fn share(&self, kind: FaultKind) -> f64 {
        match kind {
            FaultKind::ServerError => self.server_error,
            FaultKind::Unavailable => self.unavailable,
            FaultKind::Throttled => self.throttled,
            FaultKind::Slow => self.slow,
            FaultKind::DroppedRequest => self.dropped_request,
            FaultKind::LostReply => self.lost_reply,
            FaultKind::PartialBatch => self.partial_batch,
        }
    }

    fn share_mut(&mut self, kind: FaultKind) -> &mut f64 {
        match kind {
            FaultKind::ServerError => &mut self.server_error,
            FaultKind::Unavailable => &mut self.unavailable,
            FaultKind::Throttled => &mut self.throttled,
            FaultKind::Slow => &mut self.slow,
            FaultKind::DroppedRequest => &mut self.dropped_request,
            FaultKind::LostReply => &mut self.lost_reply,
            FaultKind::PartialBatch => &mut self.partial_batch,
        }
    }

    pub fn total(&self) -> f64 {
        FaultKind::ALL.iter().map(|k| self.share(*k)).sum()
    }

    fn validate(&self) -> Result<(), ProxyError> {
        for k in FaultKind::ALL {
            let s = self.share(k);
            if !(0.0..=1.0).contains(&s) {
                return Err(ProxyError::Shares(format!("{} is {s}", k.as_str())));
            }
        }
        // A little slack for sums like 0.1 + 0.2 that floating point puts just above a target.
        if self.total() > 1.0 + 1e-9 {
            return Err(ProxyError::Shares(format!(
                "they add up to {}",
                self.total()
            )));
        }
        Ok(())
    }
}

/// What the proxy injects, and where.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Seeds the draws, so a run's sequence of decisions is reproducible.
    pub seed: u64,
    pub shares: Shares,
    /// Delay of a [`FaultKind::Slow`] answer.
    pub slow_delay: Duration,
    /// Operations that may be faulted (names without the `AmazonSQS.` prefix); others are
    /// always forwarded untouched.
    pub operations: BTreeSet<String>,
    /// Bound on one upstream exchange (above SQS's 20 s long poll).
    pub upstream_timeout: Duration,
}

impl FaultConfig {
    /// Faults with `shares` on the worker's operations ([`WORKER_OPERATIONS`]).
    pub fn new(seed: u64, shares: Shares) -> Self {
        Self {
            seed,
            shares,
            slow_delay: Duration::from_millis(500),
            operations: WORKER_OPERATIONS.iter().map(|s| s.to_string()).collect(),
            upstream_timeout: Duration::from_secs(30),
        }
    }

    /// Replaces the eligible operations.
    pub fn with_operations(mut self, ops: &[&str]) -> Self {
        self.operations = ops.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// Requests and faults seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Every request received, by operation (`unknown` without an SQS target header).
    pub requests: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Faults injected, by operation then kind.
    pub faults_by_operation: BTreeMap<String, BTreeMap<String, u64>>,
    /// Batch entries reported failed (and not applied), by operation.
    pub failed_entries: BTreeMap<String, u64>,
    /// Upstream exchanges that failed (answered 502).
    pub upstream_errors: u64,
    /// Client connections accepted (few when keep-alive works).
    pub connections: u64,
}

impl FaultCounts {
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }
    pub fn faults_of(&self, kind: FaultKind) -> u64 {
        self.faults.get(kind.as_str()).copied().unwrap_or(0)
    }
}

/// A delete the upstream accepted (`DeleteMessage` answered 200, or a `DeleteMessageBatch` entry
/// in `Successful`), whether or not its answer reached the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AcceptedDelete {
    pub receipt_handle: String,
    /// From the `ReceiveMessage` answer that handed out this receipt handle; `None` when this
    /// proxy did not see that answer.
    pub message_id: Option<String>,
    /// `ApproximateReceiveCount` in that answer, when it was asked for.
    pub receive_count: Option<u32>,
}

/// A running proxy. Stop it with [`FaultProxy::shutdown`]; dropping it also stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    config: FaultConfig,
    active: AtomicBool,
    cancel: CancellationToken,
    state: Mutex<State>,
}

struct State {
    rng: fastrand::Rng,
    /// Alternates the throttling code, so both spellings get exercised.
    throttle_flip: bool,
    counts: FaultCounts,
    /// receipt handle → (message id, receive count), from ReceiveMessage answers.
    receipts: HashMap<String, (String, Option<u32>)>,
    deletes: Vec<AcceptedDelete>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Counters and maps stay consistent between single updates: poisoning is harmless here.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the request and draws its fault (one draw per request, eligible or not, so the
    /// sequence depends only on the seed and the order of requests).
    fn admit(&self, op: &str) -> Option<FaultKind> {
        let mut st = self.state();
        *st.counts.requests.entry(op.to_string()).or_insert(0) += 1;
        let u = st.rng.f64();
        if !self.active.load(Ordering::Relaxed) || !self.config.operations.contains(op) {
            return None;
        }
        let mut acc = 0.0;
        for kind in FaultKind::ALL {
            acc += self.config.shares.share(kind);
            if u < acc {
                return (kind != FaultKind::PartialBatch || is_batch(op)).then_some(kind);
            }
        }
        None
    }

    fn record_fault(&self, op: &str, kind: FaultKind) {
        let mut st = self.state();
        let name = kind.as_str().to_string();
        *st.counts.faults.entry(name.clone()).or_insert(0) += 1;
        *st.counts
            .faults_by_operation
            .entry(op.to_string())
            .or_default()
            .entry(name)
            .or_insert(0) += 1;
    }
}

fn is_batch(op: &str) -> bool {
    matches!(op, "DeleteMessageBatch" | "ChangeMessageVisibilityBatch")
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, config: FaultConfig) -> Result<FaultProxy, ProxyError> {
        config.shares.validate()?;
        if !upstream.starts_with("http://") {
            return Err(ProxyError::Upstream(upstream.to_string()));
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(ProxyError::Bind)?;
        let addr = listener.local_addr().map_err(ProxyError::Bind)?;
        // no_proxy: a test machine's HTTP_PROXY must not reroute loopback traffic.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(config.upstream_timeout)
            .build()
            .map_err(ProxyError::Client)?;
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http,
            active: AtomicBool::new(true),
            cancel: CancellationToken::new(),
            state: Mutex::new(State {
                rng: fastrand::Rng::with_seed(config.seed),
                throttle_flip: false,
                counts: FaultCounts::default(),
                receipts: HashMap::new(),
                deletes: Vec::new(),
            }),
            config,
        });
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(listener, shared.clone(), tracker.clone()));
        tracing::debug!(%addr, upstream, "fault proxy listening");
        Ok(FaultProxy {
            addr,
            shared,
            tracker,
        })
    }

    /// The endpoint URL to give an SQS client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Turns injection on or off (requests are still forwarded and counted).
    pub fn set_active(&self, active: bool) {
        self.shared.active.store(active, Ordering::Relaxed);
    }

    pub fn counts(&self) -> FaultCounts {
        self.shared.state().counts.clone()
    }

    /// Deletes the upstream accepted, in order.
    pub fn accepted_deletes(&self) -> Vec<AcceptedDelete> {
        self.shared.state().deletes.clone()
    }

    /// Stops accepting, cuts open connections and waits (bounded) for their tasks.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("fault proxy connections did not stop in time");
        }
    }
}

impl Drop for FaultProxy {
    /// A proxy dropped without `shutdown()` still stops (a signal only, no I/O here).
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.cancel.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                shared.state().counts.connections += 1;
                let shared = shared.clone();
                tracker.spawn(async move {
                    if let Err(e) = serve_connection(stream, &shared).await {
                        tracing::debug!(error = %e, "fault proxy connection ended");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::debug!(error = %e, "fault proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One parsed request.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The client asked to close after this exchange (or speaks HTTP/1.0).
    close: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `AmazonSQS.ReceiveMessage` → `ReceiveMessage`.
    fn operation(&self) -> String {
        self.header("x-amz-target")
            .and_then(|t| t.rsplit_once('.').map(|(_, op)| op.to_string()))
            .unwrap_or_else(|| "unknown".into())
    }
}

/// An answer to write back.
struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    fn aws_error(status: u16, code: &str, message: &str, query_error: Option<&str>) -> Self {
        let mut headers = vec![
            ("content-type".to_string(), AMZ_JSON.as_bytes().to_vec()),
            (
                "x-amzn-requestid".to_string(),
                format!("fault-{:016x}", fastrand::u64(..)).into_bytes(),
            ),
        ];
        if let Some(q) = query_error {
            headers.push(("x-amzn-query-error".to_string(), q.as_bytes().to_vec()));
        }
        Response {
            status,
            headers,
            body: json!({ "__type": code, "message": message })
                .to_string()
                .into_bytes(),
        }
    }

    fn json(status: u16, body: &Value) -> Self {
        Response {
            status,
            headers: vec![("content-type".to_string(), AMZ_JSON.as_bytes().to_vec())],
            body: body.to_string().into_bytes(),
        }
    }
}

/// What to do with one exchange.
enum Action {
    Reply(Response),
    /// Close the connection without answering.
    Close,
}

async fn serve_connection(stream: TcpStream, shared: &Shared) -> Result<(), ProxyError> {
    // Small request/answer exchanges: don't let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let request = tokio::select! {
            r = read_request(&mut read, &mut write) => r,
            _ = shared.cancel.cancelled() => return Ok(()),
        };
        let request = match request {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(ProxyError::Malformed(m)) => {
                let answer = Response::aws_error(400, "MalformedRequest", &m, None);
                write_response(&mut write, &answer, true).await?;
                return Err(ProxyError::Malformed(m));
            }
            Err(e) => return Err(e),
        };
        let close = request.close;
        let action = tokio::select! {
            a = handle(shared, request) => a,
            _ = shared.cancel.cancelled() => return Ok(()),
        };
        match action {
            Action::Reply(answer) => {
                write_response(&mut write, &answer, close).await?;
                if close {
                    return Ok(());
                }
            }
            Action::Close => return Ok(()),
        }
    }
}

async fn handle(shared: &Shared, request: Request) -> Action {
    let op = request.operation();
    let Some(kind) = shared.admit(&op) else {
        return Action::Reply(forward(shared, &op, &request, None).await);
    };
    match kind {
        FaultKind::ServerError => {
            shared.record_fault(&op, kind);
            Action::Reply(Response::aws_error(
                500,
                "com.amazonaws.sqs#InternalError",
                "We encountered an internal error. Please try again. (injected)",
                Some("InternalError;Receiver"),
            ))
        }
        FaultKind::Unavailable => {
            shared.record_fault(&op, kind);
            Action::Reply(Response::aws_error(
                503,
                "com.amazonaws.sqs#ServiceUnavailable",
                "Service is unavailable. Try again later. (injected)",
                Some("ServiceUnavailable;Receiver"),
            ))
        }
        FaultKind::Throttled => {
            shared.record_fault(&op, kind);
            let flip = {
                let mut st = shared.state();
                st.throttle_flip = !st.throttle_flip;
                st.throttle_flip
            };
            // SQS's own modelled error, and the generic one AWS front ends answer with; the SDK
            // classifies both codes as throttling (retried with backoff).
            Action::Reply(if flip {
                Response::aws_error(
                    400,
                    "com.amazonaws.sqs#RequestThrottled",
                    "Request is throttled. (injected)",
                    Some("RequestThrottled;Sender"),
                )
            } else {
                Response::aws_error(
                    400,
                    "com.amazon.coral.availability#ThrottlingException",
                    "Rate exceeded (injected)",
                    None,
                )
            })
        }
        FaultKind::Slow => {
            shared.record_fault(&op, kind);
            tokio::time::sleep(shared.config.slow_delay).await;
            Action::Reply(forward(shared, &op, &request, None).await)
        }
        FaultKind::DroppedRequest => {
            shared.record_fault(&op, kind);
            Action::Close
        }
        FaultKind::LostReply => {
            shared.record_fault(&op, kind);
            // Applied upstream (and recorded in the ledger), but the client never hears of it.
            let _ = forward(shared, &op, &request, None).await;
            Action::Close
        }
        FaultKind::PartialBatch => match split_batch(shared, &request.body) {
            Some(split) => {
                shared.record_fault(&op, kind);
                let failed_n = split.failed.len() as u64;
                *shared
                    .state()
                    .counts
                    .failed_entries
                    .entry(op.clone())
                    .or_insert(0) += failed_n;
                Action::Reply(partial_batch(shared, &op, &request, split).await)
            }
            // Not a batch body we can read: forward it untouched, nothing injected.
            None => Action::Reply(forward(shared, &op, &request, None).await),
        },
    }
}

/// A batch request split into what is forwarded and what is reported failed.
struct Split {
    /// The request body with the failed entries removed; `None` when every entry failed.
    forwarded: Option<Vec<u8>>,
    /// Ids of the entries reported failed.
    failed: Vec<String>,
}

/// Picks at least one entry of a batch body to fail (each with probability one half).
fn split_batch(shared: &Shared, body: &[u8]) -> Option<Split> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let entries = v.get_mut("Entries")?.as_array_mut()?;
    if entries.is_empty() {
        return None;
    }
    let mut fail: Vec<bool> = {
        let mut st = shared.state();
        entries.iter().map(|_| st.rng.bool()).collect()
    };
    if !fail.iter().any(|f| *f) {
        let i = shared.state().rng.usize(..fail.len());
        if let Some(f) = fail.get_mut(i) {
            *f = true;
        }
    }
    let mut failed = Vec::new();
    let mut kept = Vec::new();
    for (entry, f) in entries.drain(..).zip(fail) {
        if f {
            failed.push(entry.get("Id")?.as_str()?.to_string());
        } else {
            kept.push(entry);
        }
    }
    let forwarded = if kept.is_empty() {
        None
    } else {
        *entries = kept;
        Some(v.to_string().into_bytes())
    };
    Some(Split { forwarded, failed })
}

fn failed_entry(id: &str) -> Value {
    json!({
        "Id": id,
        "SenderFault": false,
        "Code": "InternalError",
        "Message": "injected by the fault proxy: this entry was not applied",
    })
}

async fn partial_batch(shared: &Shared, op: &str, request: &Request, split: Split) -> Response {
    let failed: Vec<Value> = split.failed.iter().map(|id| failed_entry(id)).collect();
    let Some(body) = split.forwarded else {
        // Nothing left to forward (SQS rejects an empty batch): answer for the server.
        return Response::json(200, &json!({ "Successful": [], "Failed": failed }));
    };
    let mut answer = forward(shared, op, request, Some(body)).await;
    if answer.status != 200 {
        // The forwarded part failed as a whole: that answer already covers every entry.
        return answer;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&answer.body) else {
        return answer;
    };
    if let Some(obj) = v.as_object_mut() {
        let list = obj.entry("Failed").or_insert_with(|| json!([]));
        if let Some(arr) = list.as_array_mut() {
            arr.extend(failed);
        }
    }
    answer.body = v.to_string().into_bytes();
    // The body changed: a checksum of the old one would now be wrong.
    answer
        .headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case("x-amz-crc32"));
    answer
}

/// Headers that describe one hop, not the message: never copied across the proxy.
fn hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
        "expect",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Forwards `request` (with `body` instead of its own when given), records what the answer
/// says about receipts and deletes, and returns the answer (502 when the upstream failed).
async fn forward(shared: &Shared, op: &str, request: &Request, body: Option<Vec<u8>>) -> Response {
    let sent_body = body.unwrap_or_else(|| request.body.clone());
    let method = match reqwest::Method::from_bytes(request.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            return Response::aws_error(
                400,
                "MalformedRequest",
                &format!("unknown method {}", request.method),
                None,
            )
        }
    };
    let url = format!("{}{}", shared.upstream, request.target);
    let mut req = shared.http.request(method, url).body(sent_body.clone());
    for (k, v) in &request.headers {
        if !hop_by_hop(k) {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let result = async {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, Vec<u8>)> = resp
            .headers()
            .iter()
            .filter(|(k, _)| !hop_by_hop(k.as_str()))
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let body = resp.bytes().await?.to_vec();
        Ok::<_, reqwest::Error>(Response {
            status,
            headers,
            body,
        })
    }
    .await;
    match result {
        Ok(answer) => {
            if answer.status == 200 {
                record_effects(shared, op, &sent_body, &answer.body);
            }
            answer
        }
        Err(e) => {
            shared.state().counts.upstream_errors += 1;
            tracing::debug!(error = %e, op, "fault proxy: upstream failed");
            Response::aws_error(
                502,
                "BadGateway",
                &format!("fault proxy: upstream failed: {e}"),
                None,
            )
        }
    }
}

/// Keeps the ledger: receipt handles handed out by receives, deletes accepted upstream.
fn record_effects(shared: &Shared, op: &str, request_body: &[u8], answer_body: &[u8]) {
    match op {
        "ReceiveMessage" => {
            let Ok(v) = serde_json::from_slice::<Value>(answer_body) else {
                return;
            };
            let Some(messages) = v.get("Messages").and_then(Value::as_array) else {
                return;
            };
            let mut st = shared.state();
            for m in messages {
                let (Some(id), Some(receipt)) = (
                    m.get("MessageId").and_then(Value::as_str),
                    m.get("ReceiptHandle").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let count = m
                    .pointer("/Attributes/ApproximateReceiveCount")
                    .and_then(Value::as_str)
                    .and_then(|c| c.parse().ok());
                st.receipts
                    .insert(receipt.to_string(), (id.to_string(), count));
            }
        }
        "DeleteMessage" => {
            let Ok(v) = serde_json::from_slice::<Value>(request_body) else {
                return;
            };
            if let Some(receipt) = v.get("ReceiptHandle").and_then(Value::as_str) {
                accept_delete(&mut shared.state(), receipt);
            }
        }
        "DeleteMessageBatch" => {
            let (Ok(req), Ok(ans)) = (
                serde_json::from_slice::<Value>(request_body),
                serde_json::from_slice::<Value>(answer_body),
            ) else {
                return;
            };
            let by_id: HashMap<&str, &str> = req
                .get("Entries")
                .and_then(Value::as_array)
                .map(|es| {
                    es.iter()
                        .filter_map(|e| {
                            Some((e.get("Id")?.as_str()?, e.get("ReceiptHandle")?.as_str()?))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut st = shared.state();
            for ok in ans
                .get("Successful")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(receipt) = ok
                    .get("Id")
                    .and_then(Value::as_str)
                    .and_then(|id| by_id.get(id))
                {
                    accept_delete(&mut st, receipt);
                }
            }
        }
        _ => {}
    }
}

fn accept_delete(st: &mut State, receipt: &str) {
    let (message_id, receive_count) = match st.receipts.get(receipt) {
        Some((id, count)) => (Some(id.clone()), *count),
        None => (None, None),
    };
    st.deletes.push(AcceptedDelete {
        receipt_handle: receipt.to_string(),
        message_id,
        receive_count,
    });
}

/// Reads one line (up to [`MAX_HEAD_LINE`]), without its line ending. `None` at a clean EOF.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<String>, ProxyError> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_HEAD_LINE)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(ProxyError::Malformed("line too long or cut short".into()));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ProxyError::Malformed("non-UTF-8 request head".into()))
}

/// Reads one request. `None` when the client closed the connection between requests.
async fn read_request<R, W>(r: &mut R, w: &mut W) -> Result<Option<Request>, ProxyError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Tolerate blank lines before a request line (RFC 9112 §2.2).
    let line = loop {
        match read_line(r).await? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ProxyError::Malformed(format!("request line {line:?}")));
    };
    let mut headers = Vec::new();
    loop {
        let Some(h) = read_line(r).await? else {
            return Err(ProxyError::Malformed(
                "connection closed in the headers".into(),
            ));
        };
        if h.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ProxyError::Malformed("too many headers".into()));
        }
        let Some((k, v)) = h.split_once(':') else {
            return Err(ProxyError::Malformed(format!("header line {h:?}")));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body: Vec::new(),
        close: false,
    };
    let connection = request
        .header("connection")
        .unwrap_or("")
        .to_ascii_lowercase();
    request.close = if version == "HTTP/1.0" {
        !connection.contains("keep-alive")
    } else {
        connection.contains("close")
    };
    if request
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        w.flush().await?;
    }
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    request.body = if chunked {
        read_chunked(r).await?
    } else {
        let len = match request.header("content-length") {
            Some(l) => l
                .parse::<usize>()
                .map_err(|_| ProxyError::Malformed(format!("content-length {l:?}")))?,
            None => 0,
        };
        if len > MAX_BODY {
            return Err(ProxyError::Malformed(format!("body of {len} bytes")));
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).await?;
        body
    };
    Ok(Some(request))
}

async fn read_chunked<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ProxyError> {
    let mut body = Vec::new();
    loop {
        let Some(size_line) = read_line(r).await? else {
            return Err(ProxyError::Malformed("connection closed in a chunk".into()));
        };
        let hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16)
            .map_err(|_| ProxyError::Malformed(format!("chunk size {size_line:?}")))?;
        if size == 0 {
            // Trailers, up to the blank line that ends the message.
            while let Some(l) = read_line(r).await? {
                if l.is_empty() {
                    break;
                }
            }
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(ProxyError::Malformed("chunked body too large".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).await?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).await?;
        if &crlf != b"\r\n" {
            return Err(ProxyError::Malformed("chunk not followed by CRLF".into()));
        }
    }
}

async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    answer: &Response,
    close: bool,
) -> Result<(), ProxyError> {
    let reason = reqwest::StatusCode::from_u16(answer.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", answer.status).into_bytes();
    for (k, v) in &answer.headers {
        if hop_by_hop(k) {
            continue;
        }
        head.extend_from_slice(k.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("content-length: {}\r\n", answer.body.len()).as_bytes());
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    w.write_all(&head).await?;
    w.write_all(&answer.body).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;

    /// A fake upstream: echoes the operation and entries it got, and records every body.
    async fn upstream() -> (String, Arc<Mutex<Vec<Value>>>, tokio::task::JoinHandle<()>) {
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen2 = seen.clone();
        let app = axum::Router::new().route(
            "/",
            post(move |headers: axum::http::HeaderMap, body: String| {
                let seen = seen2.clone();
                async move {
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    seen.lock().expect("lock").push(v.clone());
                    let target = headers
                        .get("x-amz-target")
                        .and_then(|t| t.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let answer = if target.ends_with("Batch") {
                        let ok: Vec<Value> = v["Entries"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|e| json!({"Id": e["Id"]}))
                            .collect();
                        json!({"Successful": ok, "Failed": []})
                    } else if target.ends_with("ReceiveMessage") {
                        json!({"Messages": [
                            {"MessageId": "m1", "ReceiptHandle": "r1", "Body": "x",
                             "Attributes": {"ApproximateReceiveCount": "2"}},
                            {"MessageId": "m2", "ReceiptHandle": "r2", "Body": "y"}
                        ]})
                    } else {
                        json!({})
                    };
                    ([("content-type", AMZ_JSON)], answer.to_string())
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}"), seen, task)
    }

    /// A test client that goes straight to loopback, whatever HTTP_PROXY says.
    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
    }

    async fn call(
        http: &reqwest::Client,
        proxy: &FaultProxy,
        op: &str,
        body: Value,
    ) -> Result<(u16, Value), reqwest::Error> {
        let resp = http
            .post(proxy.endpoint())
            .header("x-amz-target", format!("AmazonSQS.{op}"))
            .header("content-type", AMZ_JSON)
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    fn batch(n: usize) -> Value {
        let entries: Vec<Value> = (0..n)
            .map(|i| json!({"Id": i.to_string(), "ReceiptHandle": format!("r{i}")}))
            .collect();
        json!({"QueueUrl": "http://q/000000000000/q", "Entries": entries})
    }

    #[tokio::test]
    async fn forwards_untouched_and_keeps_the_connection_alive() {
        let (up, seen, task) = upstream().await;
        let proxy = FaultProxy::start(&up, FaultConfig::new(1, Shares::NONE))
            .await
            .expect("start");
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .build()
            .expect("client");
        for _ in 0..5 {
            let (status, v) = call(&http, &proxy, "DeleteMessageBatch", batch(3))
                .await
                .expect("call");
            assert_eq!(status, 200);
            assert_eq!(v["Successful"].as_array().map(Vec::len), Some(3));
        }
        assert_eq!(seen.lock().expect("lock").len(), 5);
        let counts = proxy.counts();
        assert_eq!(counts.requests.get("DeleteMessageBatch"), Some(&5));
        assert_eq!(counts.total_faults(), 0);
        assert_eq!(counts.connections, 1, "one connection, reused");
        proxy.shutdown().await;
        task.abort();
    }

    #[tokio::test]
    async fn injected_errors_have_aws_shapes_and_are_not_forwarded() {
        let (up, seen, task) = upstream().await;
        let http = http();
        for (kind, status, code) in [
            (FaultKind::ServerError, 500, "InternalError"),
            (FaultKind::Unavailable, 503, "ServiceUnavailable"),
            (FaultKind::Throttled, 400, "RequestThrottled"),
        ] {
            let proxy = FaultProxy::start(&up, FaultConfig::new(7, Shares::only(kind)))
                .await
                .expect("start");
            let (s, v) = call(&http, &proxy, "ReceiveMessage", json!({}))
                .await
                .expect("call");
            assert_eq!(s, status);
            assert!(
                v["__type"].as_str().is_some_and(|t| t.ends_with(code)),
                "{v}"
            );
            assert_eq!(proxy.counts().faults_of(kind), 1);
            // Set-up calls are not eligible by default.
            let (s, _) = call(&http, &proxy, "CreateQueue", json!({}))
                .await
                .expect("call");
            assert_eq!(s, 200);
            proxy.shutdown().await;
        }
        assert_eq!(
            seen.lock().expect("lock").len(),
            3,
            "only CreateQueue got through"
        );
        task.abort();
    }

    #[tokio::test]
    async fn dropped_requests_never_arrive_and_lost_replies_are_applied() {
        let (up, seen, task) = upstream().await;
        let http = http();
        let proxy = FaultProxy::start(
            &up,
            FaultConfig::new(3, Shares::only(FaultKind::DroppedRequest)),
        )
        .await
        .expect("start");
        assert!(call(
            &http,
            &proxy,
            "DeleteMessage",
            json!({"ReceiptHandle": "r1"})
        )
        .await
        .is_err());
        assert!(seen.lock().expect("lock").is_empty());
        assert!(proxy.accepted_deletes().is_empty());
        proxy.shutdown().await;

        let proxy = FaultProxy::start(&up, FaultConfig::new(3, Shares::only(FaultKind::LostReply)))
            .await
            .expect("start");
        // The receive's answer is lost too, but the proxy saw it: the ledger knows r1 is m1.
        assert!(call(&http, &proxy, "ReceiveMessage", json!({}))
            .await
            .is_err());
        assert!(call(
            &http,
            &proxy,
            "DeleteMessage",
            json!({"ReceiptHandle": "r1"})
        )
        .await
        .is_err());
        assert_eq!(seen.lock().expect("lock").len(), 2);
        assert_eq!(
            proxy.accepted_deletes(),
            vec![AcceptedDelete {
                receipt_handle: "r1".into(),
                message_id: Some("m1".into()),
                receive_count: Some(2),
            }]
        );
        assert_eq!(proxy.counts().faults_of(FaultKind::LostReply), 2);
        proxy.shutdown().await;
        task.abort();
    }

    #[tokio::test]
    async fn partial_batch_failures_are_faithful() {
        let (up, seen, task) = upstream().await;
        let http = http();
        let proxy = FaultProxy::start(
            &up,
            FaultConfig::new(11, Shares::only(FaultKind::PartialBatch)),
        )
        .await
        .expect("start");
        let mut failed_total = 0;
        for _ in 0..20 {
            seen.lock().expect("lock").clear();
            let (s, v) = call(&http, &proxy, "ChangeMessageVisibilityBatch", batch(10))
                .await
                .expect("call");
            assert_eq!(s, 200);
            let ids = |key: &str| -> BTreeSet<String> {
                v[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["Id"].as_str().map(str::to_string))
                    .collect()
            };
            let (ok, failed) = (ids("Successful"), ids("Failed"));
            assert!(!failed.is_empty(), "at least one entry fails");
            assert_eq!(ok.len() + failed.len(), 10);
            assert!(ok.is_disjoint(&failed));
            let forwarded: BTreeSet<String> = seen
                .lock()
                .expect("lock")
                .iter()
                .flat_map(|b| b["Entries"].as_array().cloned().unwrap_or_default())
                .filter_map(|e| e["Id"].as_str().map(str::to_string))
                .collect();
            assert_eq!(
                forwarded, ok,
                "exactly the entries not reported failed were applied"
            );
            for f in v["Failed"].as_array().into_iter().flatten() {
                assert_eq!(f["SenderFault"], json!(false));
                assert_eq!(f["Code"], json!("InternalError"));
            }
            failed_total += failed.len() as u64;
        }
        let counts = proxy.counts();
        assert_eq!(counts.faults_of(FaultKind::PartialBatch), 20);
        assert_eq!(
            counts.failed_entries.get("ChangeMessageVisibilityBatch"),
            Some(&failed_total)
        );
        // A partial-batch draw on a non-batch operation passes through.
        let (s, _) = call(
            &http,
            &proxy,
            "DeleteMessage",
            json!({"ReceiptHandle": "r"}),
        )
        .await
        .expect("call");
        assert_eq!(s, 200);
        proxy.shutdown().await;
        task.abort();
    }

    #[tokio::test]
    async fn the_same_seed_draws_the_same_faults() {
        let (up, _seen, task) = upstream().await;
        let http = http();
        let shares = Shares {
            server_error: 0.2,
            unavailable: 0.2,
            throttled: 0.2,
            ..Shares::NONE
        };
        let mut runs = Vec::new();
        for _ in 0..2 {
            let proxy = FaultProxy::start(&up, FaultConfig::new(42, shares))
                .await
                .expect("start");
            let mut statuses = Vec::new();
            for _ in 0..30 {
                let (s, _) = call(&http, &proxy, "SendMessage", json!({}))
                    .await
                    .expect("call");
                statuses.push(s);
            }
            runs.push(statuses);
            proxy.shutdown().await;
        }
        assert_eq!(runs[0], runs[1]);
        assert!(runs[0].contains(&200) && runs[0].iter().any(|s| *s != 200));
        task.abort();
    }

    #[tokio::test]
    async fn bad_shares_are_refused() {
        let too_much = Shares {
            server_error: 0.6,
            slow: 0.6,
            ..Shares::NONE
        };
        assert!(matches!(
            FaultProxy::start("http://127.0.0.1:1", FaultConfig::new(1, too_much)).await,
            Err(ProxyError::Shares(_))
        ));
        let negative = Shares {
            throttled: -0.1,
            ..Shares::NONE
        };
        assert!(
            FaultProxy::start("http://127.0.0.1:1", FaultConfig::new(1, negative))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn chunked_bodies_and_expect_continue_are_read() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let mut w = Vec::new();
        let req = read_request(&mut r, &mut w)
            .await
            .expect("parse")
            .expect("request");
        assert_eq!(req.body, b"abcde");
        assert!(!req.close);
        assert!(w.starts_with(b"HTTP/1.1 100 Continue"));
        let mut r = BufReader::new(&b"GET / HTTP/1.0\r\n\r\n"[..]);
        let req = read_request(&mut r, &mut w)
            .await
            .expect("parse")
            .expect("req");
        assert!(req.close, "HTTP/1.0 closes by default");
        let mut r = BufReader::new(&b""[..]);
        assert!(read_request(&mut r, &mut w).await.expect("eof").is_none());
        let mut r = BufReader::new(&b"nonsense\r\n\r\n"[..]);
        assert!(read_request(&mut r, &mut w).await.is_err());
    }
}

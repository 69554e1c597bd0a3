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
//! The HTTP side is axum (hyper) on the same [`KillableListener`] as the agent double: the two
//! faults that close a connection in the middle of an exchange kill it from the handler
//! ([`ConnAddr::drop_connection`]), so the client reads EOF where it expected a status line.
//!
//! Besides counts of requests and faults ([`FaultProxy::counts`]), the proxy keeps a ledger of
//! the deletes the upstream accepted, each tied to the `ReceiveMessage` answer that handed out its
//! receipt handle ([`FaultProxy::accepted_deletes`]): a drill can then prove that no message was
//! deleted after a failed job.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::killable::{ConnAddr, KillableListener};
use crate::tasks::Tasks;

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

/// Why the proxy could not start.
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
    /// The most requests of one operation forwarded and not yet answered at one moment.
    pub max_in_flight: BTreeMap<String, u64>,
    /// The most messages asked for (`MaxNumberOfMessages`) by receives in flight at one moment:
    /// a worker that never holds a message it cannot start keeps this within its slots.
    pub max_messages_asked_in_flight: u64,
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
    tasks: Tasks,
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
    /// Requests forwarded and not yet answered, by operation; and the messages those receives
    /// asked for.
    in_flight: BTreeMap<String, u64>,
    messages_asked: u64,
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
        crate::lock(&self.state)
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
        let tasks = Tasks::default();
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http,
            active: AtomicBool::new(true),
            cancel: tasks.token(),
            state: Mutex::new(State {
                in_flight: BTreeMap::new(),
                messages_asked: 0,
                rng: fastrand::Rng::with_seed(config.seed),
                throttle_flip: false,
                counts: FaultCounts::default(),
                receipts: HashMap::new(),
                deletes: Vec::new(),
            }),
            config,
        });
        let app = Router::new()
            .fallback(serve_request)
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(shared.clone());
        let on_accept = shared.clone();
        let listener = KillableListener(listener).tap_io(move |io| {
            // Small request/answer exchanges: don't let Nagle hold them back.
            let _ = io.tcp().set_nodelay(true);
            on_accept.state().counts.connections += 1;
        });
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<ConnAddr>(),
        )
        .with_graceful_shutdown(shared.cancel.clone().cancelled_owned());
        tasks.spawn(async move {
            if let Err(error) = server.await {
                tracing::debug!(%error, "fault proxy server failed");
            }
        });
        tracing::debug!(%addr, upstream, "fault proxy listening");
        Ok(FaultProxy {
            addr,
            shared,
            tasks,
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

    /// Stops accepting, cuts open exchanges and waits (bounded) for the server to stop. A proxy
    /// dropped without it still stops.
    pub async fn shutdown(self) {
        self.tasks.stop(SHUTDOWN_GRACE, "fault proxy").await;
    }
}

/// One request, as read by hyper.
struct Request {
    method: Method,
    /// Path and query, as sent.
    target: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Request {
    /// `AmazonSQS.ReceiveMessage` → `ReceiveMessage`.
    fn operation(&self) -> String {
        self.headers
            .get("x-amz-target")
            .and_then(|t| t.to_str().ok())
            .and_then(|t| t.rsplit_once('.').map(|(_, op)| op.to_string()))
            .unwrap_or_else(|| "unknown".into())
    }
}

/// An answer to send back: the upstream's, or one the proxy makes up.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn aws_error(
        status: StatusCode,
        code: &str,
        message: &str,
        query_error: Option<&'static str>,
    ) -> Self {
        let mut answer = Answer::json(status, &json!({ "__type": code, "message": message }));
        if let Ok(id) = HeaderValue::from_str(&format!("fault-{:016x}", fastrand::u64(..))) {
            answer
                .headers
                .insert(HeaderName::from_static("x-amzn-requestid"), id);
        }
        if let Some(q) = query_error {
            answer.headers.insert(
                HeaderName::from_static("x-amzn-query-error"),
                HeaderValue::from_static(q),
            );
        }
        answer
    }

    fn json(status: StatusCode, body: &Value) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
        Answer {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        // hyper adds the framing (content-length) for the body as it is now.
        (self.status, self.headers, self.body).into_response()
    }
}

/// What to do with one exchange.
enum Action {
    Reply(Answer),
    /// Close the connection without answering.
    Close,
}

/// Every request, whatever its method and path, goes through here.
async fn serve_request(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = Request {
        method,
        target: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        headers,
        body,
    };
    let action = tokio::select! {
        a = handle(&shared, request) => a,
        // Shutting down: cut the exchange, as a dying server would.
        () = shared.cancel.cancelled() => Action::Close,
    };
    match action {
        Action::Reply(answer) => answer.into_response(),
        Action::Close => conn.drop_connection(),
    }
}

async fn handle(shared: &Shared, request: Request) -> Action {
    let op = request.operation();
    let Some(kind) = shared.admit(&op) else {
        return Action::Reply(forward(shared, &op, &request, None).await);
    };
    match kind {
        FaultKind::ServerError | FaultKind::Unavailable | FaultKind::Throttled => {
            shared.record_fault(&op, kind);
            Action::Reply(injected_error(shared, kind))
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

/// The answer of an error fault, as SQS (or the AWS front end before it) gives it.
fn injected_error(shared: &Shared, kind: FaultKind) -> Answer {
    let throttle_flip = || {
        let mut st = shared.state();
        st.throttle_flip = !st.throttle_flip;
        st.throttle_flip
    };
    let (status, code, message, query_error) = match kind {
        FaultKind::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "com.amazonaws.sqs#InternalError",
            "We encountered an internal error. Please try again. (injected)",
            Some("InternalError;Receiver"),
        ),
        FaultKind::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "com.amazonaws.sqs#ServiceUnavailable",
            "Service is unavailable. Try again later. (injected)",
            Some("ServiceUnavailable;Receiver"),
        ),
        // SQS's own modelled error, and the generic one AWS front ends answer with; the SDK
        // classifies both codes as throttling (retried with backoff).
        _ if throttle_flip() => (
            StatusCode::BAD_REQUEST,
            "com.amazonaws.sqs#RequestThrottled",
            "Request is throttled. (injected)",
            Some("RequestThrottled;Sender"),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "com.amazon.coral.availability#ThrottlingException",
            "Rate exceeded (injected)",
            None,
        ),
    };
    Answer::aws_error(status, code, message, query_error)
}

/// A batch request split into what is forwarded and what is reported failed.
struct Split {
    /// The request body with the failed entries removed; `None` when every entry failed.
    forwarded: Option<Bytes>,
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
        Some(Bytes::from(v.to_string()))
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

async fn partial_batch(shared: &Shared, op: &str, request: &Request, split: Split) -> Answer {
    let failed: Vec<Value> = split.failed.iter().map(|id| failed_entry(id)).collect();
    let Some(body) = split.forwarded else {
        // Nothing left to forward (SQS rejects an empty batch): answer for the server.
        return Answer::json(
            StatusCode::OK,
            &json!({ "Successful": [], "Failed": failed }),
        );
    };
    let mut answer = forward(shared, op, request, Some(body)).await;
    if answer.status != StatusCode::OK {
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
    answer.body = Bytes::from(v.to_string());
    // The body changed: a checksum of the old one would now be wrong.
    answer.headers.remove("x-amz-crc32");
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
/// Counts a forwarded request as in flight until it is dropped (answered, or abandoned).
struct InFlight<'a> {
    shared: &'a Shared,
    op: String,
    asked: u64,
}

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared, op: &str, body: &[u8]) -> Self {
        let asked = if op == "ReceiveMessage" {
            serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("MaxNumberOfMessages").and_then(Value::as_u64))
                .unwrap_or(1)
        } else {
            0
        };
        let mut st = shared.state();
        let n = st.in_flight.entry(op.to_string()).or_insert(0);
        *n += 1;
        let now = *n;
        st.messages_asked += asked;
        let asked_now = st.messages_asked;
        let max = st.counts.max_in_flight.entry(op.to_string()).or_insert(0);
        *max = (*max).max(now);
        st.counts.max_messages_asked_in_flight =
            st.counts.max_messages_asked_in_flight.max(asked_now);
        drop(st);
        Self {
            shared,
            op: op.to_string(),
            asked,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        if let Some(n) = st.in_flight.get_mut(&self.op) {
            *n = n.saturating_sub(1);
        }
        st.messages_asked = st.messages_asked.saturating_sub(self.asked);
    }
}

async fn forward(shared: &Shared, op: &str, request: &Request, body: Option<Bytes>) -> Answer {
    let sent_body = body.unwrap_or_else(|| request.body.clone());
    let _in_flight = InFlight::new(shared, op, &sent_body);
    let url = format!("{}{}", shared.upstream, request.target);
    let result = async {
        let resp = shared
            .http
            .request(request.method.clone(), url)
            .headers(end_to_end(&request.headers))
            .body(sent_body.clone())
            .send()
            .await?;
        let status = resp.status();
        let headers = end_to_end(resp.headers());
        let body = resp.bytes().await?;
        Ok::<_, reqwest::Error>(Answer {
            status,
            headers,
            body,
        })
    }
    .await;
    match result {
        Ok(answer) => {
            if answer.status == StatusCode::OK {
                record_effects(shared, op, &sent_body, &answer.body);
            }
            answer
        }
        Err(e) => {
            shared.state().counts.upstream_errors += 1;
            tracing::debug!(error = %e, op, "fault proxy: upstream failed");
            Answer::aws_error(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                &format!("fault proxy: upstream failed: {e}"),
                None,
            )
        }
    }
}

/// The headers of `map` that describe the message, not the hop.
fn end_to_end(map: &HeaderMap) -> HeaderMap {
    map.iter()
        .filter(|(k, _)| !hop_by_hop(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A fake upstream (it echoes the operation and entries it got, and records every body) and
    /// a client; the upstream stops when this is dropped.
    struct Bed {
        url: String,
        seen: Arc<Mutex<Vec<Value>>>,
        /// Goes straight to loopback, whatever HTTP_PROXY says.
        http: reqwest::Client,
        server: tokio::task::JoinHandle<()>,
    }

    impl Bed {
        /// The request bodies the upstream got.
        fn seen(&self) -> MutexGuard<'_, Vec<Value>> {
            self.seen.lock().expect("lock")
        }
    }

    impl Drop for Bed {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    async fn bed() -> Bed {
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
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Bed {
            url: format!("http://{addr}"),
            seen,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            server,
        }
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

    /// A proxy in front of `up`.
    async fn proxy_with(up: &str, seed: u64, shares: Shares) -> FaultProxy {
        FaultProxy::start(up, FaultConfig::new(seed, shares))
            .await
            .expect("start")
    }

    /// `DeleteMessage` of the receipt handle `r1`.
    async fn delete_r1(
        http: &reqwest::Client,
        proxy: &FaultProxy,
    ) -> Result<(u16, Value), reqwest::Error> {
        call(http, proxy, "DeleteMessage", json!({"ReceiptHandle": "r1"})).await
    }

    fn batch(n: usize) -> Value {
        let entries: Vec<Value> = (0..n)
            .map(|i| json!({"Id": i.to_string(), "ReceiptHandle": format!("r{i}")}))
            .collect();
        json!({"QueueUrl": "http://q/000000000000/q", "Entries": entries})
    }

    #[tokio::test]
    async fn forwards_untouched_and_keeps_the_connection_alive() {
        let bed = bed().await;
        let proxy = proxy_with(&bed.url, 1, Shares::NONE).await;
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
        assert_eq!(bed.seen().len(), 5);
        let counts = proxy.counts();
        assert_eq!(counts.requests.get("DeleteMessageBatch"), Some(&5));
        assert_eq!(counts.total_faults(), 0);
        assert_eq!(counts.connections, 1, "one connection, reused");
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn injected_errors_have_aws_shapes_and_are_not_forwarded() {
        let bed = bed().await;
        for (kind, status, code) in [
            (FaultKind::ServerError, 500, "InternalError"),
            (FaultKind::Unavailable, 503, "ServiceUnavailable"),
            (FaultKind::Throttled, 400, "RequestThrottled"),
        ] {
            let proxy = proxy_with(&bed.url, 7, Shares::only(kind)).await;
            let (s, v) = call(&bed.http, &proxy, "ReceiveMessage", json!({}))
                .await
                .expect("call");
            assert_eq!(s, status);
            assert!(
                v["__type"].as_str().is_some_and(|t| t.ends_with(code)),
                "{v}"
            );
            assert_eq!(proxy.counts().faults_of(kind), 1);
            // Set-up calls are not eligible by default.
            let (s, _) = call(&bed.http, &proxy, "CreateQueue", json!({}))
                .await
                .expect("call");
            assert_eq!(s, 200);
            proxy.shutdown().await;
        }
        assert_eq!(bed.seen().len(), 3, "only CreateQueue got through");
    }

    #[tokio::test]
    async fn dropped_requests_never_arrive_and_lost_replies_are_applied() {
        let bed = bed().await;
        let proxy = proxy_with(&bed.url, 3, Shares::only(FaultKind::DroppedRequest)).await;
        assert!(delete_r1(&bed.http, &proxy).await.is_err());
        assert!(bed.seen().is_empty());
        assert!(proxy.accepted_deletes().is_empty());
        proxy.shutdown().await;

        let proxy = proxy_with(&bed.url, 3, Shares::only(FaultKind::LostReply)).await;
        // The receive's answer is lost too, but the proxy saw it: the ledger knows r1 is m1.
        assert!(call(&bed.http, &proxy, "ReceiveMessage", json!({}))
            .await
            .is_err());
        assert!(delete_r1(&bed.http, &proxy).await.is_err());
        assert_eq!(bed.seen().len(), 2);
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
    }

    #[tokio::test]
    async fn partial_batch_failures_are_faithful() {
        let bed = bed().await;
        let proxy = proxy_with(&bed.url, 11, Shares::only(FaultKind::PartialBatch)).await;
        let mut failed_total = 0;
        for _ in 0..20 {
            bed.seen().clear();
            let (s, v) = call(&bed.http, &proxy, "ChangeMessageVisibilityBatch", batch(10))
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
            let forwarded: BTreeSet<String> = bed
                .seen()
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
            &bed.http,
            &proxy,
            "DeleteMessage",
            json!({"ReceiptHandle": "r"}),
        )
        .await
        .expect("call");
        assert_eq!(s, 200);
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn the_same_seed_draws_the_same_faults() {
        let bed = bed().await;
        let shares = Shares {
            server_error: 0.2,
            unavailable: 0.2,
            throttled: 0.2,
            ..Shares::NONE
        };
        let mut runs = Vec::new();
        for _ in 0..2 {
            let proxy = proxy_with(&bed.url, 42, shares).await;
            let mut statuses = Vec::new();
            for _ in 0..30 {
                let (s, _) = call(&bed.http, &proxy, "SendMessage", json!({}))
                    .await
                    .expect("call");
                statuses.push(s);
            }
            runs.push(statuses);
            proxy.shutdown().await;
        }
        assert_eq!(runs[0], runs[1]);
        assert!(runs[0].contains(&200) && runs[0].iter().any(|s| *s != 200));
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

    /// Sends one request (asking to close after it) on a raw connection to the proxy.
    async fn raw_exchange(proxy: &FaultProxy, op: &str, body: &str) -> TcpStream {
        let mut tcp = TcpStream::connect(proxy.local_addr())
            .await
            .expect("connect");
        let request = format!(
            "POST / HTTP/1.1\r\nHost: q\r\nX-Amz-Target: AmazonSQS.{op}\r\n\
             Content-Type: {AMZ_JSON}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(request.as_bytes()).await.expect("write");
        tcp
    }

    /// Everything the proxy sends until it closes (a reset counts as a close).
    async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got))
            .await
            .expect("the proxy closes the connection instead of hanging");
        match read {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        got
    }

    #[tokio::test]
    async fn closing_faults_close_the_tcp_connection_before_any_answer_byte() {
        let bed = bed().await;
        for (kind, forwarded) in [(FaultKind::DroppedRequest, 0), (FaultKind::LostReply, 1)] {
            bed.seen().clear();
            let proxy = proxy_with(&bed.url, 5, Shares::only(kind)).await;
            let mut tcp = raw_exchange(&proxy, "DeleteMessage", r#"{"ReceiptHandle":"r1"}"#).await;
            let got = read_until_closed(&mut tcp).await;
            assert!(
                got.is_empty(),
                "{}: no status line, not a byte: {:?}",
                kind.as_str(),
                String::from_utf8_lossy(&got)
            );
            assert_eq!(bed.seen().len(), forwarded, "{}", kind.as_str());
            assert_eq!(proxy.counts().faults_of(kind), 1);
            // An unfaulted exchange on the same proxy is answered normally.
            proxy.set_active(false);
            let mut tcp = raw_exchange(&proxy, "DeleteMessage", "{}").await;
            let got = read_until_closed(&mut tcp).await;
            assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{got:?}");
            proxy.shutdown().await;
        }
    }

    #[tokio::test]
    async fn chunked_bodies_and_expect_continue_are_forwarded() {
        let bed = bed().await;
        let proxy = proxy_with(&bed.url, 1, Shares::NONE).await;
        let mut tcp = TcpStream::connect(proxy.local_addr())
            .await
            .expect("connect");
        tcp.write_all(
            b"POST / HTTP/1.1\r\nHost: q\r\nX-Amz-Target: AmazonSQS.SendMessage\r\n\
              Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("head");
        // The body is sent only once the proxy asked for it.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.expect("100 Continue");
            head.push(byte[0]);
        }
        assert_eq!(head, b"HTTP/1.1 100 Continue\r\n\r\n");
        tcp.write_all(b"4\r\n{\"Qu\r\na;x=y\r\neueUrl\":1}\r\n0\r\n\r\n")
            .await
            .expect("chunks");
        let got = read_until_closed(&mut tcp).await;
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{got:?}");
        assert_eq!(*bed.seen(), vec![json!({"QueueUrl": 1})]);
        proxy.shutdown().await;
    }
}

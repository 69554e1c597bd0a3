//! A faithful stand-in for the ECS agent's task-protection endpoint and the task-metadata v4
//! `/task` endpoint, for integration tests, the `local-ecs` dev binary and the local demo.
//!
//! One [`AgentDouble`] is one HTTP server on loopback hosting any number of fake tasks; each
//! [`TaskEndpoint`] has its own endpoint id, so its [`TaskEndpoint::agent_uri`] and
//! [`TaskEndpoint::metadata_uri`] are what ECS would inject as `ECS_AGENT_URI` and
//! `ECS_CONTAINER_METADATA_URI_V4`.
//!
//! Shapes, status codes and the order of checks follow the agent's
//! `ecs-agent/tmds/handlers/taskprotection/v1` handlers of the ECS agent (v1.105.1):
//!
//! 1. `PUT` body that does not decode (empty, not JSON, unknown field, wrong type) → 400
//!    `InvalidParameterException` without `Arn`, even for an unknown endpoint id.
//! 2. unknown endpoint id → 404 `ResourceNotFoundException`.
//! 3. `ProtectionEnabled` missing or `null` → 400 `InvalidParameterException` with `Arn`;
//!    `ExpiresInMinutes` outside 1..=2880 → 400 `InvalidParameterException` (ECS's own check).
//! 4. only then the request "reaches ECS": a scripted reply, a random fault or the default reply
//!    ([`Reply::Normal`] applies the request and answers success).
//!
//! So scripted and random replies are consumed only by requests that pass the agent's own
//! checks. Deliberate differences from the real agent: keys must be spelled exactly in
//! PascalCase (Go's decoder also accepts other casings, but a client that relies on that is
//! wrong), trailing bytes after the JSON object are rejected, and there is no 40 req/s rate
//! limiter (script [`Reply::PlainText429`] instead).
//!
//! Time: protection expiry is computed on the double's clock, which is the system clock plus an
//! offset that [`AgentDouble::advance_clock`] moves forward, so tests can see protection expire
//! without waiting. Reply delays use `tokio::time`, so a paused test runtime skips them.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::killable::{ConnAddr, KillableListener};
use crate::lock;

/// The agent's HTTP server write timeout (`writeTimeout` in the agent's task server setup):
/// a response not written within 5 s is never written.
pub const AGENT_SERVER_TIMEOUT: Duration = Duration::from_secs(5);
/// `ExpiresInMinutes` when the request omits it (ECS UpdateTaskProtection default, 2 h).
pub const DEFAULT_EXPIRES_IN_MINUTES: u32 = 120;
/// Smallest `ExpiresInMinutes` ECS accepts.
pub const MIN_EXPIRES_IN_MINUTES: u32 = 1;
/// Largest `ExpiresInMinutes` ECS accepts (48 h).
pub const MAX_EXPIRES_IN_MINUTES: u32 = 2880;
/// Task definition family reported by the metadata endpoint.
pub const TASK_FAMILY: &str = "queue-worker";
/// Task definition revision reported by the metadata endpoint.
pub const TASK_REVISION: &str = "1";

/// Body of the agent's local rate limiter (tollbooth's default message).
const RATE_LIMIT_BODY: &str = "You have reached maximum request limit.";
/// How long [`AgentDouble::shutdown`] waits for the server before aborting it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One HTTP server on loopback hosting many fake tasks.
pub struct AgentDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// State shared by the server's handlers and the test-side handles.
struct Shared {
    base_url: String,
    tasks: Mutex<HashMap<String, Arc<TaskState>>>,
    next_id: AtomicU64,
    clock_offset: Mutex<Duration>,
    /// Cancelled on shutdown: wakes slow and hanging handlers so the server can stop.
    cancel: CancellationToken,
}

impl Shared {
    fn now(&self) -> SystemTime {
        let offset = *lock(&self.clock_offset);
        let now = SystemTime::now();
        now.checked_add(offset).unwrap_or(now)
    }

    fn task(&self, endpoint_id: &str) -> Option<Arc<TaskState>> {
        lock(&self.tasks).get(endpoint_id).cloned()
    }
}

struct TaskState {
    cluster: String,
    task_arn: String,
    endpoint_id: String,
    inner: Mutex<TaskInner>,
}

struct TaskInner {
    /// As last set; expiry is applied when read.
    protection: Protection,
    calls: Vec<CallRecord>,
    script: VecDeque<Reply>,
    default_reply: Reply,
    faults: Option<RandomFaults>,
    meta: TaskMetadata,
}

/// What the task metadata v4 `/task` endpoint reports besides cluster and task ARN; `local-ecs`
/// keeps it in step with its scheduler ([`TaskEndpoint::update_metadata`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMetadata {
    pub family: String,
    /// The task's own task definition revision (a string, as the agent reports it).
    pub revision: String,
    /// `RUNNING`, or `STOPPED` once ECS has told the task to stop.
    pub desired_status: String,
    pub known_status: String,
    /// `ServiceName`: EC2 agents report it, Fargate does not (`None` leaves the key out).
    pub service_name: Option<String>,
    pub availability_zone: String,
    pub pull_started_at: SystemTime,
    pub pull_stopped_at: SystemTime,
}

impl TaskMetadata {
    fn new(now: SystemTime) -> Self {
        Self {
            family: TASK_FAMILY.to_owned(),
            revision: TASK_REVISION.to_owned(),
            desired_status: "RUNNING".to_owned(),
            known_status: "RUNNING".to_owned(),
            service_name: None,
            availability_zone: "us-east-1a".to_owned(),
            pull_started_at: now,
            pull_stopped_at: now,
        }
    }
}

struct RandomFaults {
    share: f64,
    rng: fastrand::Rng,
    mix: Vec<Reply>,
}

/// Handle on one fake task: its URIs, its protection state, its call log and its script.
#[derive(Clone)]
pub struct TaskEndpoint {
    shared: Arc<Shared>,
    task: Arc<TaskState>,
}

/// Protection state as the agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protection {
    pub enabled: bool,
    pub expires_at: Option<SystemTime>,
}

impl Protection {
    const OFF: Protection = Protection {
        enabled: false,
        expires_at: None,
    };

    /// Expired protection reads as released, as ECS reports it.
    fn as_of(self, now: SystemTime) -> Protection {
        match self.expires_at {
            Some(at) if self.enabled && now < at => self,
            _ => Protection::OFF,
        }
    }
}

/// One protection request received for a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// Arrival time, on the double's clock.
    pub at: SystemTime,
    /// `"PUT"` or `"GET"`.
    pub method: String,
    /// `ProtectionEnabled` as sent (PUT only; `None` when absent or undecodable).
    pub request_enabled: Option<bool>,
    /// `ExpiresInMinutes` as sent (`None` when omitted, so the 120 min default applied).
    pub expires_in_minutes: Option<u32>,
    /// What was answered.
    pub reply: ReplyKind,
    /// HTTP status answered; 0 when no response was sent ([`ReplyKind::Hang`], [`ReplyKind::Dropped`]).
    pub status: u16,
    /// `error.Code` or `failure.Reason` of the answer, if any.
    pub code: Option<String>,
    /// Delay added before answering (from [`Reply::Slow`]).
    pub delay: Duration,
}

/// The shape of an answer, as logged in [`CallRecord::reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    Normal,
    FailureInOk,
    Error,
    PlainText429,
    Hang,
    /// Delay reached [`AGENT_SERVER_TIMEOUT`]: connection closed without a response.
    Dropped,
    /// Rejected by the agent's own validation (400 `InvalidParameterException`).
    BadRequest,
}

/// How the double answers one protection request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Apply the request and answer success.
    Normal,
    /// HTTP 200 with a `failure` body; state not changed.
    FailureInOk { reason: String },
    /// Error body with this status; state not changed.
    Error {
        status: u16,
        code: String,
        message: String,
    },
    /// HTTP 429 with a plain-text body, like the agent's rate limiter.
    PlainText429,
    /// Wait, then answer `then`. Delays add up when nested. When the total reaches
    /// [`AGENT_SERVER_TIMEOUT`] the double waits 5 s, applies `then`'s effect on the state (the
    /// call reached ECS, the answer is lost) and closes the connection without a response —
    /// what a client sees when the agent's response misses its server's write deadline.
    Slow { delay: Duration, then: Box<Reply> },
    /// Never answer; the connection stays open until the client gives up or the double shuts down.
    Hang,
}

impl Reply {
    /// ECS throttled the agent's call: 400 `ThrottlingException`.
    pub fn throttled() -> Reply {
        Reply::error(400, "ThrottlingException", "Rate exceeded")
    }

    /// The task role lacks `ecs:UpdateTaskProtection` / `ecs:GetTaskProtection`.
    pub fn access_denied() -> Reply {
        Reply::error(
            400,
            "AccessDeniedException",
            "User: arn:aws:sts::123456789012:assumed-role/task-role/session is not authorized \
             to perform: ecs:UpdateTaskProtection on resource: task",
        )
    }

    /// A standalone task (not part of a service): `failure` with `TASK_NOT_VALID` in a 200.
    pub fn task_not_valid() -> Reply {
        Reply::FailureInOk {
            reason: "TASK_NOT_VALID".to_owned(),
        }
    }

    /// The agent's own 4 s call to ECS timed out: 504 `RequestCanceled`.
    pub fn gateway_timeout() -> Reply {
        Reply::error(
            504,
            "RequestCanceled",
            "Timed out calling ECS Task Protection API",
        )
    }

    /// 500 `ServerException`.
    pub fn server_error() -> Reply {
        Reply::error(
            500,
            "ServerException",
            "Service encountered an internal error",
        )
    }

    /// The task has no task role: 403 `AccessDeniedException`, answered by the agent itself.
    pub fn no_task_role() -> Reply {
        Reply::error(
            403,
            "AccessDeniedException",
            "Invalid Request: no task IAM role credentials available for task",
        )
    }

    fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::Error {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    /// The transient faults [`TaskEndpoint::set_random_faults`] draws from. Permanent answers
    /// (access denied, no task role, `TASK_NOT_VALID`) are left out: a correct client stops
    /// asking after them, which would end a random-fault run; script them instead.
    pub fn transient_faults() -> Vec<Reply> {
        vec![
            Reply::throttled(),
            Reply::server_error(),
            Reply::gateway_timeout(),
            Reply::PlainText429,
            Reply::Slow {
                delay: Duration::from_millis(500),
                then: Box::new(Reply::Normal),
            },
        ]
    }
}

impl AgentDouble {
    /// Binds `addr` (port 0 picks a free port) and serves until [`AgentDouble::shutdown`].
    pub async fn start(addr: SocketAddr) -> std::io::Result<AgentDouble> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            tasks: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            clock_offset: Mutex::new(Duration::ZERO),
            cancel: cancel.clone(),
        });
        let app = Router::new()
            .route(
                "/api/{endpoint_id}/task-protection/v1/state",
                get(protection_handler).put(protection_handler),
            )
            .route("/v4/{endpoint_id}/task", get(task_metadata_handler))
            .with_state(shared.clone());
        let server = axum::serve(
            KillableListener(listener),
            app.into_make_service_with_connect_info::<ConnAddr>(),
        )
        .with_graceful_shutdown(cancel.clone().cancelled_owned());
        let server = tokio::spawn(async move { server.await });
        tracing::debug!(%addr, "agent double listening");
        Ok(AgentDouble {
            addr,
            shared,
            cancel,
            server: Some(server),
        })
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers a fake task under a fresh endpoint id, unprotected.
    pub fn add_task(&self, cluster: &str, task_arn: &str) -> TaskEndpoint {
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        // Real ids look like "<32 hex>-<digits>"; the counter keeps them unique.
        let endpoint_id = format!("{:016x}{:016x}-{n}", fastrand::u64(..), fastrand::u64(..));
        let task = Arc::new(TaskState {
            cluster: cluster.to_owned(),
            task_arn: task_arn.to_owned(),
            endpoint_id: endpoint_id.clone(),
            inner: Mutex::new(TaskInner {
                protection: Protection::OFF,
                calls: Vec::new(),
                script: VecDeque::new(),
                default_reply: Reply::Normal,
                faults: None,
                meta: TaskMetadata::new(self.shared.now()),
            }),
        });
        lock(&self.shared.tasks).insert(endpoint_id, task.clone());
        TaskEndpoint {
            shared: self.shared.clone(),
            task,
        }
    }

    /// Forgets a task (a stopped task): its endpoints answer 404 from now on.
    pub fn remove_task(&self, task: &TaskEndpoint) {
        lock(&self.shared.tasks).remove(&task.task.endpoint_id);
    }

    /// Moves the double's clock forward, so protection expires without waiting.
    pub fn advance_clock(&self, by: Duration) {
        let mut offset = lock(&self.shared.clock_offset);
        *offset = offset.saturating_add(by);
    }

    /// The double's current time (system clock plus [`AgentDouble::advance_clock`] offsets).
    pub fn now(&self) -> SystemTime {
        self.shared.now()
    }

    /// Stops the server: hanging and slow requests are cut, then the serve task is awaited
    /// (aborted if it has not stopped within 5 s).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::debug!(%error, "agent double server failed"),
                Ok(Err(error)) => tracing::debug!(%error, "agent double server task failed"),
                Err(_) => {
                    tracing::debug!("agent double did not stop in time; aborting it");
                    server.abort();
                }
            }
        }
    }
}

impl Drop for AgentDouble {
    /// A double dropped without `shutdown()` still stops serving (no I/O here, just a signal).
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl TaskEndpoint {
    /// Value for `ECS_AGENT_URI`.
    pub fn agent_uri(&self) -> String {
        format!("{}/api/{}", self.shared.base_url, self.task.endpoint_id)
    }

    /// Value for `ECS_CONTAINER_METADATA_URI_V4`.
    pub fn metadata_uri(&self) -> String {
        format!("{}/v4/{}", self.shared.base_url, self.task.endpoint_id)
    }

    pub fn task_arn(&self) -> String {
        self.task.task_arn.clone()
    }

    pub fn cluster(&self) -> String {
        self.task.cluster.clone()
    }

    pub fn endpoint_id(&self) -> String {
        self.task.endpoint_id.clone()
    }

    /// Current state as the agent would report it (expired protection reads as released).
    pub fn protection(&self) -> Protection {
        let now = self.shared.now();
        self.task.lock().protection.as_of(now)
    }

    /// Enabled and not expired at `t`.
    pub fn is_protected_at(&self, t: SystemTime) -> bool {
        self.task.lock().protection.as_of(t).enabled
    }

    /// Sets protection the way a successful `UpdateTaskProtection` through the ECS API does (the
    /// same state the agent endpoint reads and writes); not logged in [`TaskEndpoint::calls`].
    pub fn set_protection(&self, enabled: bool, minutes: u32) -> Protection {
        let now = self.shared.now();
        let mut inner = self.task.lock();
        inner.protection = protection_after(now, enabled, minutes);
        inner.protection.as_of(now)
    }

    /// What the metadata endpoint reports for this task.
    pub fn metadata(&self) -> TaskMetadata {
        self.task.lock().meta.clone()
    }

    /// Changes what the metadata endpoint reports for this task.
    pub fn update_metadata(&self, change: impl FnOnce(&mut TaskMetadata)) {
        change(&mut self.task.lock().meta);
    }

    /// Every protection request received, in arrival order.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.task.lock().calls.clone()
    }

    /// Queues replies, consumed one per protection request before normal behaviour.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = Reply>) {
        self.task.lock().script.extend(replies);
    }

    /// Scripted replies not consumed yet.
    pub fn pending_replies(&self) -> usize {
        self.task.lock().script.len()
    }

    /// The reply used when the script is empty and no random fault fires.
    pub fn set_default_reply(&self, r: Reply) {
        self.task.lock().default_reply = r;
    }

    /// With probability `share` per request (after the script), answer a fault drawn from
    /// [`Reply::transient_faults`]; `seed` makes the sequence reproducible.
    pub fn set_random_faults(&self, share: f64, seed: u64) {
        self.set_random_fault_mix(share, seed, Reply::transient_faults());
    }

    /// Like [`TaskEndpoint::set_random_faults`] with your own mix of replies.
    /// A `share` of 0 or an empty mix turns random faults off.
    pub fn set_random_fault_mix(&self, share: f64, seed: u64, mix: Vec<Reply>) {
        let share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        self.task.lock().faults = (share > 0.0 && !mix.is_empty()).then(|| RandomFaults {
            share,
            rng: fastrand::Rng::with_seed(seed),
            mix,
        });
    }
}

impl TaskState {
    fn lock(&self) -> MutexGuard<'_, TaskInner> {
        lock(&self.inner)
    }
}

impl TaskInner {
    /// Script first, then a random fault, then the default reply.
    fn next_reply(&mut self) -> Reply {
        if let Some(reply) = self.script.pop_front() {
            return reply;
        }
        if let Some(faults) = &mut self.faults {
            if faults.rng.f64() < faults.share {
                let i = faults.rng.usize(..faults.mix.len());
                if let Some(reply) = faults.mix.get(i) {
                    return reply.clone();
                }
            }
        }
        self.default_reply.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling

/// The PUT body the agent decodes (`TaskProtectionRequest` with unknown fields disallowed).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    #[serde(rename = "ProtectionEnabled", default)]
    protection_enabled: Option<bool>,
    #[serde(rename = "ExpiresInMinutes", default)]
    expires_in_minutes: Option<i64>,
}

/// Decodes like the agent's Go decoder: the body must be one JSON object (serde alone would
/// also accept an array for a struct).
fn decode_put_body(body: &[u8]) -> serde_json::Result<PutBody> {
    let object = serde_json::from_slice::<serde_json::Map<String, Value>>(body)?;
    PutBody::deserialize(Value::Object(object))
}

/// A reply with nested delays flattened.
enum Final {
    Normal,
    FailureInOk(String),
    Error {
        status: u16,
        code: String,
        message: String,
    },
    PlainText429,
    Hang,
}

fn flatten(reply: Reply) -> (Duration, Final) {
    let mut delay = Duration::ZERO;
    let mut reply = reply;
    loop {
        reply = match reply {
            Reply::Slow { delay: d, then } => {
                delay = delay.saturating_add(d);
                *then
            }
            Reply::Normal => return (delay, Final::Normal),
            Reply::FailureInOk { reason } => return (delay, Final::FailureInOk(reason)),
            Reply::Error {
                status,
                code,
                message,
            } => {
                return (
                    delay,
                    Final::Error {
                        status,
                        code,
                        message,
                    },
                )
            }
            Reply::PlainText429 => return (delay, Final::PlainText429),
            Reply::Hang => return (delay, Final::Hang),
        };
    }
}

async fn protection_handler(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnAddr>,
    Path(endpoint_id): Path<String>,
    method: Method,
    body: Bytes,
) -> Response {
    let is_put = method == Method::PUT;
    tracing::debug!(%method, %endpoint_id, "agent double: task protection request");
    let at = shared.now();
    let task = shared.task(&endpoint_id);

    // 1. The agent decodes a PUT body before looking the task up.
    let request = if is_put {
        match decode_put_body(&body) {
            Ok(request) => Some(request),
            Err(_) => {
                if let Some(task) = &task {
                    record_bad_request(task, at, None, None);
                }
                return error_response(
                    400,
                    None,
                    "",
                    "InvalidParameterException",
                    "UpdateTaskProtection: failed to decode request",
                );
            }
        }
    } else {
        None
    };

    // 2. Unknown endpoint id.
    let Some(task) = task else {
        return error_response(
            404,
            None,
            "",
            "ResourceNotFoundException",
            "Failed to find a task for the request",
        );
    };

    // 3. The agent's and ECS's parameter checks.
    let mut expires_in = None;
    let mut request_enabled = None;
    let mut raw_minutes = None;
    if let Some(request) = request {
        request_enabled = request.protection_enabled;
        raw_minutes = request
            .expires_in_minutes
            .and_then(|m| u32::try_from(m).ok());
        let Some(enabled) = request.protection_enabled else {
            record_bad_request(&task, at, None, raw_minutes);
            return error_response(
                400,
                None,
                &task.task_arn,
                "InvalidParameterException",
                "Invalid request: does not contain 'ProtectionEnabled' field",
            );
        };
        if let Some(minutes) = request.expires_in_minutes {
            let valid = i64::from(MIN_EXPIRES_IN_MINUTES)..=i64::from(MAX_EXPIRES_IN_MINUTES);
            if !valid.contains(&minutes) {
                record_bad_request(&task, at, Some(enabled), raw_minutes);
                return error_response(
                    400,
                    Some(request_id()),
                    &task.task_arn,
                    "InvalidParameterException",
                    "expiresInMinutes must be between 1 and 2880",
                );
            }
        }
        expires_in = Some((enabled, raw_minutes.unwrap_or(DEFAULT_EXPIRES_IN_MINUTES)));
    }

    // 4. The request reaches "ECS": decide the answer and log it on arrival.
    let (delay, answer) = {
        let mut inner = task.lock();
        let (delay, answer) = flatten(inner.next_reply());
        let dropped = delay >= AGENT_SERVER_TIMEOUT && !matches!(answer, Final::Hang);
        let (reply, status, code) = match &answer {
            _ if dropped => (ReplyKind::Dropped, 0, None),
            Final::Normal => (ReplyKind::Normal, 200, None),
            Final::FailureInOk(reason) => (ReplyKind::FailureInOk, 200, Some(reason.clone())),
            Final::Error { status, code, .. } => (ReplyKind::Error, *status, Some(code.clone())),
            Final::PlainText429 => (ReplyKind::PlainText429, 429, None),
            Final::Hang => (ReplyKind::Hang, 0, None),
        };
        inner.calls.push(CallRecord {
            at,
            method: method.as_str().to_owned(),
            request_enabled,
            expires_in_minutes: raw_minutes,
            reply,
            status,
            code,
            delay,
        });
        (delay, answer)
    };

    if let Final::Hang = answer {
        shared.cancel.cancelled().await;
        return conn.drop_connection();
    }
    let cut = delay >= AGENT_SERVER_TIMEOUT;
    let wait = delay.min(AGENT_SERVER_TIMEOUT);
    if !wait.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.cancel.cancelled() => return conn.drop_connection(),
        }
    }

    let response = match answer {
        Final::Normal => {
            let now = shared.now();
            let mut inner = task.lock();
            if let Some((enabled, minutes)) = expires_in {
                inner.protection = protection_after(now, enabled, minutes);
            }
            protection_response(&task.task_arn, inner.protection.as_of(now))
        }
        Final::FailureInOk(reason) => (
            StatusCode::OK,
            Json(json!({
                "failure": { "Arn": task.task_arn, "Detail": null, "Reason": reason }
            })),
        )
            .into_response(),
        Final::Error {
            status,
            code,
            message,
        } => {
            // Errors the agent produces itself carry no ECS request id.
            let from_ecs = !matches!(status, 403 | 404 | 504);
            error_response(
                status,
                from_ecs.then(request_id),
                &task.task_arn,
                &code,
                &message,
            )
        }
        Final::PlainText429 => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            RATE_LIMIT_BODY,
        )
            .into_response(),
        Final::Hang => conn.drop_connection(),
    };
    if cut {
        return conn.drop_connection();
    }
    response
}

async fn task_metadata_handler(
    State(shared): State<Arc<Shared>>,
    Path(endpoint_id): Path<String>,
) -> Response {
    tracing::debug!(%endpoint_id, "agent double: task metadata request");
    let Some(task) = shared.task(&endpoint_id) else {
        // The v4 handlers answer a JSON string, not an object.
        return (
            StatusCode::NOT_FOUND,
            Json(json!(
                "V4 task metadata handler: unable to get task arn from request"
            )),
        )
            .into_response();
    };
    let meta = task.lock().meta.clone();
    let mut body = json!({
        "Cluster": task.cluster,
        "TaskARN": task.task_arn,
        "Family": meta.family,
        "Revision": meta.revision,
        "DesiredStatus": meta.desired_status,
        "KnownStatus": meta.known_status,
        "Limits": { "CPU": 0.25, "Memory": 512 },
        "PullStartedAt": rfc3339(meta.pull_started_at),
        "PullStoppedAt": rfc3339(meta.pull_stopped_at),
        "AvailabilityZone": meta.availability_zone,
        "LaunchType": "FARGATE",
        "Containers": [{
            "Name": "worker",
            "DesiredStatus": meta.desired_status,
            "KnownStatus": meta.known_status,
            "Type": "NORMAL"
        }]
    });
    if let (Some(name), Some(object)) = (meta.service_name, body.as_object_mut()) {
        object.insert("ServiceName".to_owned(), Value::from(name));
    }
    Json(body).into_response()
}

/// Protection after a successful set at `now`: each enabling call restarts the clock.
fn protection_after(now: SystemTime, enabled: bool, minutes: u32) -> Protection {
    if enabled {
        Protection {
            enabled: true,
            expires_at: now.checked_add(Duration::from_secs(u64::from(minutes) * 60)),
        }
    } else {
        Protection::OFF
    }
}

fn record_bad_request(
    task: &TaskState,
    at: SystemTime,
    request_enabled: Option<bool>,
    expires_in_minutes: Option<u32>,
) {
    task.lock().calls.push(CallRecord {
        at,
        method: "PUT".to_owned(),
        request_enabled,
        expires_in_minutes,
        reply: ReplyKind::BadRequest,
        status: 400,
        code: Some("InvalidParameterException".to_owned()),
        delay: Duration::ZERO,
    });
}

fn protection_response(task_arn: &str, p: Protection) -> Response {
    let date = p.expires_at.filter(|_| p.enabled).map(rfc3339);
    Json(json!({
        "protection": {
            "ExpirationDate": date,
            "ProtectionEnabled": p.enabled,
            "TaskArn": task_arn,
        }
    }))
    .into_response()
}

/// `{"requestID":..,"error":{"Arn":..,"Code":..,"Message":..}}`; like the agent, `requestID`
/// and `Arn` are left out when empty.
fn error_response(
    status: u16,
    request_id: Option<String>,
    arn: &str,
    code: &str,
    message: &str,
) -> Response {
    let mut error = serde_json::Map::new();
    if !arn.is_empty() {
        error.insert("Arn".to_owned(), Value::from(arn));
    }
    error.insert("Code".to_owned(), Value::from(code));
    error.insert("Message".to_owned(), Value::from(message));
    let mut body = serde_json::Map::new();
    if let Some(id) = request_id {
        body.insert("requestID".to_owned(), Value::from(id));
    }
    body.insert("error".to_owned(), Value::Object(error));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(Value::Object(body))).into_response()
}

/// A UUID-shaped request id, as ECS returns.
pub(crate) fn request_id() -> String {
    let a = fastrand::u128(..);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (a >> 96) as u32,
        (a >> 80) as u16,
        (a >> 64) as u16,
        (a >> 48) as u16,
        a & 0xffff_ffff_ffff
    )
}

/// RFC 3339 in UTC with Go's `RFC3339Nano` habit of dropping trailing zeros of the fraction,
/// so clients meet both `...:00Z` and `...:00.5Z`.
fn rfc3339(t: SystemTime) -> String {
    // humantime cannot format past year 9999.
    let max = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    let s = humantime::format_rfc3339_millis(t.min(max)).to_string();
    match s.strip_suffix('Z').and_then(|s| s.split_once('.')) {
        Some((whole, fraction)) => {
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() {
                format!("{whole}Z")
            } else {
                format!("{whole}.{fraction}Z")
            }
        }
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "arn:aws:ecs:us-east-1:123456789012:cluster/test";
    const ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/test/0123456789abcdef";
    /// Every request in these tests fails instead of hanging.
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

    async fn start() -> (AgentDouble, TaskEndpoint, reqwest::Client) {
        let double = AgentDouble::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("start agent double");
        let task = double.add_task(CLUSTER, ARN);
        let client = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .build()
            .expect("client");
        (double, task, client)
    }

    fn state_url(task: &TaskEndpoint) -> String {
        format!("{}/task-protection/v1/state", task.agent_uri())
    }

    /// The body of an enable-for-5-minutes request.
    const ENABLE_5M: &str = r#"{"ProtectionEnabled": true, "ExpiresInMinutes": 5}"#;

    async fn put(client: &reqwest::Client, task: &TaskEndpoint, body: &str) -> reqwest::Response {
        client
            .put(state_url(task))
            .body(body.to_owned())
            .send()
            .await
            .expect("PUT")
    }

    async fn get_state(client: &reqwest::Client, task: &TaskEndpoint) -> reqwest::Response {
        client.get(state_url(task)).send().await.expect("GET")
    }

    fn content_type(resp: &reqwest::Response) -> String {
        resp.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    async fn json_of(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let content_type = content_type(&resp);
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        (status, resp.json().await.expect("JSON body"))
    }

    fn parse_date(v: &Value) -> SystemTime {
        humantime::parse_rfc3339(v.as_str().expect("date string")).expect("RFC 3339 date")
    }

    #[tokio::test]
    async fn put_enable_and_disable_answer_the_success_shape() {
        let (double, task, client) = start().await;
        let before = SystemTime::now();

        let (status, body) = json_of(put(&client, &task, ENABLE_5M).await).await;
        assert_eq!(status, 200);
        let p = &body["protection"];
        assert_eq!(p["ProtectionEnabled"], true);
        assert_eq!(p["TaskArn"], ARN);
        let expires = parse_date(&p["ExpirationDate"]);
        assert!(expires >= before + Duration::from_secs(299));
        assert!(expires <= SystemTime::now() + Duration::from_secs(301));
        assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
        assert!(task.is_protected_at(SystemTime::now()));
        assert!(task.protection().enabled);

        let (status, body) =
            json_of(put(&client, &task, r#"{"ProtectionEnabled": false}"#).await).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"protection": {"ExpirationDate": null, "ProtectionEnabled": false, "TaskArn": ARN}})
        );
        assert_eq!(task.protection(), Protection::OFF);
        double.shutdown().await;
    }

    #[tokio::test]
    async fn get_after_put_reports_state_and_omitted_minutes_mean_120() {
        let (double, task, client) = start().await;
        let (_, body) = json_of(get_state(&client, &task).await).await;
        assert_eq!(body["protection"]["ProtectionEnabled"], false);
        assert_eq!(body["protection"]["ExpirationDate"], Value::Null);

        let before = SystemTime::now();
        let (status, _) =
            json_of(put(&client, &task, r#"{"ProtectionEnabled": true}"#).await).await;
        assert_eq!(status, 200);
        let (status, body) = json_of(get_state(&client, &task).await).await;
        assert_eq!(status, 200);
        assert_eq!(body["protection"]["ProtectionEnabled"], true);
        let expires = parse_date(&body["protection"]["ExpirationDate"]);
        let two_hours = Duration::from_secs(120 * 60);
        assert!(expires >= before + two_hours - Duration::from_secs(1));
        assert!(expires <= SystemTime::now() + two_hours + Duration::from_secs(1));
        assert_eq!(
            Some(expires),
            task.protection().expires_at.map(|t| {
                // The wire format keeps milliseconds only.
                let ms = t
                    .duration_since(UNIX_EPOCH)
                    .expect("after epoch")
                    .as_millis();
                UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("fits"))
            })
        );
        double.shutdown().await;
    }

    #[tokio::test]
    async fn expired_protection_counts_as_released() {
        let (double, task, client) = start().await;
        put(
            &client,
            &task,
            r#"{"ProtectionEnabled": true, "ExpiresInMinutes": 1}"#,
        )
        .await;
        let now = SystemTime::now();
        assert!(task.is_protected_at(now));
        assert!(!task.is_protected_at(now + Duration::from_secs(120)));

        // A refresh restarts the clock.
        double.advance_clock(Duration::from_secs(50));
        put(
            &client,
            &task,
            r#"{"ProtectionEnabled": true, "ExpiresInMinutes": 1}"#,
        )
        .await;
        double.advance_clock(Duration::from_secs(50));
        assert!(task.protection().enabled);

        double.advance_clock(Duration::from_secs(20));
        assert_eq!(task.protection(), Protection::OFF);
        let (_, body) = json_of(get_state(&client, &task).await).await;
        assert_eq!(body["protection"]["ProtectionEnabled"], false);
        assert_eq!(body["protection"]["ExpirationDate"], Value::Null);
        double.shutdown().await;
    }

    #[tokio::test]
    async fn failure_in_200_leaves_the_task_unprotected() {
        let (double, task, client) = start().await;
        task.push_replies([Reply::task_not_valid()]);
        let (status, body) = json_of(put(&client, &task, ENABLE_5M).await).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"failure": {"Arn": ARN, "Detail": null, "Reason": "TASK_NOT_VALID"}})
        );
        assert!(!task.is_protected_at(SystemTime::now()));

        // The script is spent: the next call behaves normally.
        put(&client, &task, ENABLE_5M).await;
        assert!(task.protection().enabled);
        double.shutdown().await;
    }

    #[tokio::test]
    async fn error_replies_use_the_agent_error_shape_and_keep_state() {
        let (double, task, client) = start().await;
        task.push_replies([
            Reply::throttled(),
            Reply::no_task_role(),
            Reply::gateway_timeout(),
        ]);
        let (status, json) = json_of(put(&client, &task, ENABLE_5M).await).await;
        assert_eq!(status, 400);
        assert_eq!(json["error"]["Code"], "ThrottlingException");
        assert_eq!(json["error"]["Message"], "Rate exceeded");
        assert_eq!(json["error"]["Arn"], ARN);
        assert!(json["requestID"].is_string(), "{json}");

        let (status, json) = json_of(put(&client, &task, ENABLE_5M).await).await;
        assert_eq!(status, 403);
        assert_eq!(json["error"]["Code"], "AccessDeniedException");
        assert!(json.get("requestID").is_none(), "{json}");

        let (status, json) = json_of(get_state(&client, &task).await).await;
        assert_eq!(status, 504);
        assert_eq!(json["error"]["Code"], "RequestCanceled");

        assert!(!task.protection().enabled);
        double.shutdown().await;
    }

    #[tokio::test]
    async fn plain_text_429_is_not_json() {
        let (double, task, client) = start().await;
        task.push_replies([Reply::PlainText429]);
        let resp = get_state(&client, &task).await;
        assert_eq!(resp.status().as_u16(), 429);
        let content_type = content_type(&resp);
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = resp.text().await.expect("body");
        assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
        double.shutdown().await;
    }

    #[tokio::test]
    async fn invalid_bodies_are_400_invalid_parameter_and_do_not_consume_the_script() {
        let (double, task, client) = start().await;
        task.push_replies([Reply::server_error()]);
        let bodies = [
            "",
            "not json",
            "null",
            "{}",
            r#"{"ProtectionEnabled": "yes"}"#,
            r#"{"ProtectionEnabled": true, "Extra": 1}"#,
            r#"{"protectionEnabled": true}"#,
            r#"{"ProtectionEnabled": true, "ExpiresInMinutes": 0}"#,
            r#"{"ProtectionEnabled": true, "ExpiresInMinutes": 2881}"#,
            r#"{"ProtectionEnabled": true, "ExpiresInMinutes": -5}"#,
            r#"{"ProtectionEnabled": true, "ExpiresInMinutes": 1.5}"#,
            r#"{"ProtectionEnabled": true, "ExpiresInMinutes": "5"}"#,
            r#"[true]"#,
        ];
        for body in bodies {
            let (status, json) = json_of(put(&client, &task, body).await).await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(json["error"]["Code"], "InvalidParameterException", "{body}");
        }
        let calls = task.calls();
        assert_eq!(calls.len(), bodies.len());
        assert!(calls
            .iter()
            .all(|c| c.reply == ReplyKind::BadRequest && c.status == 400 && c.method == "PUT"));
        assert_eq!(task.pending_replies(), 1);
        assert!(!task.protection().enabled);

        // The first valid request gets the scripted reply; then the boundaries are accepted.
        assert_eq!(json_of(get_state(&client, &task).await).await.0, 500);
        for body in [
            r#"{"ProtectionEnabled": true, "ExpiresInMinutes": 1}"#,
            r#"{"ProtectionEnabled": true, "ExpiresInMinutes": 2880}"#,
            r#"{"ProtectionEnabled": false, "ExpiresInMinutes": null}"#,
        ] {
            let (status, _) = json_of(put(&client, &task, body).await).await;
            assert_eq!(status, 200, "{body}");
        }
        double.shutdown().await;
    }

    #[tokio::test]
    async fn unknown_endpoint_id_is_404_with_an_error_body() {
        let (double, task, client) = start().await;
        let base = format!("http://{}", double.local_addr());
        let url = format!("{base}/api/no-such-id/task-protection/v1/state");
        let (status, json) = json_of(client.get(&url).send().await.expect("GET")).await;
        assert_eq!(status, 404);
        assert_eq!(json["error"]["Code"], "ResourceNotFoundException");
        let resp = client
            .put(&url)
            .body(r#"{"ProtectionEnabled": true}"#)
            .send()
            .await
            .expect("PUT");
        assert_eq!(json_of(resp).await.0, 404);

        let resp = client
            .get(format!("{base}/v4/no-such-id/task"))
            .send()
            .await
            .expect("GET metadata");
        assert_eq!(json_of(resp).await.0, 404);

        // A removed task is unknown too.
        double.remove_task(&task);
        assert_eq!(json_of(get_state(&client, &task).await).await.0, 404);
        double.shutdown().await;
    }

    async fn get_metadata(client: &reqwest::Client, task: &TaskEndpoint) -> reqwest::Response {
        client
            .get(format!("{}/task", task.metadata_uri()))
            .send()
            .await
            .expect("GET metadata")
    }

    #[tokio::test]
    async fn metadata_task_endpoint_reports_cluster_and_arn() {
        let (double, task, client) = start().await;
        task.push_replies([Reply::Hang]); // scripts are for protection requests only
        let resp = get_metadata(&client, &task).await;
        let (status, json) = json_of(resp).await;
        assert_eq!(status, 200);
        assert_eq!(json["Cluster"], CLUSTER);
        assert_eq!(json["TaskARN"], ARN);
        assert_eq!(json["Family"], TASK_FAMILY);
        assert_eq!(json["Revision"], TASK_REVISION);
        assert_eq!(json["DesiredStatus"], "RUNNING");
        assert_eq!(json["KnownStatus"], "RUNNING");
        assert_eq!(json["LaunchType"], "FARGATE");
        assert!(json["PullStartedAt"].is_string(), "{json}");
        assert!(
            json.get("ServiceName").is_none(),
            "Fargate leaves it out: {json}"
        );
        assert!(task.calls().is_empty());
        assert_eq!(task.pending_replies(), 1);

        task.update_metadata(|m| {
            m.revision = "2".to_owned();
            m.desired_status = "STOPPED".to_owned();
            m.service_name = Some("svc".to_owned());
        });
        let resp = get_metadata(&client, &task).await;
        let (_, json) = json_of(resp).await;
        assert_eq!(json["Revision"], "2");
        assert_eq!(json["DesiredStatus"], "STOPPED");
        assert_eq!(json["ServiceName"], "svc");
        assert!(task.calls().is_empty());
        assert_eq!(task.pending_replies(), 1);
        double.shutdown().await;
    }

    #[tokio::test]
    async fn slow_reply_is_delayed_then_answered() {
        let (double, task, client) = start().await;
        let delay = Duration::from_millis(300);
        task.push_replies([Reply::Slow {
            delay,
            then: Box::new(Reply::Normal),
        }]);
        let started = std::time::Instant::now();
        let (status, _) = json_of(put(&client, &task, ENABLE_5M).await).await;
        assert_eq!(status, 200);
        assert!(started.elapsed() >= delay);
        assert!(task.protection().enabled);
        let calls = task.calls();
        assert_eq!(calls[0].delay, delay);
        assert_eq!(calls[0].reply, ReplyKind::Normal);
        double.shutdown().await;
    }

    /// Takes the real 5 s: a paused clock would also fire the client's and hyper's timers.
    #[tokio::test]
    async fn slow_beyond_the_server_timeout_drops_the_connection_after_applying() {
        let (double, task, client) = start().await;
        task.push_replies([Reply::Slow {
            delay: Duration::from_secs(30),
            then: Box::new(Reply::Normal),
        }]);
        let err = client
            .put(state_url(&task))
            .body(ENABLE_5M)
            .send()
            .await
            .expect_err("no response");
        assert!(!err.is_status() && !err.is_timeout(), "{err}");
        assert!(task.protection().enabled);
        let calls = task.calls();
        assert_eq!((calls[0].reply, calls[0].status), (ReplyKind::Dropped, 0));

        // The server still serves other requests.
        assert_eq!(json_of(get_state(&client, &task).await).await.0, 200);
        double.shutdown().await;
    }

    #[tokio::test]
    async fn hang_never_answers_and_shutdown_still_finishes() {
        let (double, task, client) = start().await;
        task.push_replies([Reply::Hang]);
        let err = client
            .get(state_url(&task))
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .expect_err("no response");
        assert!(err.is_timeout(), "{err}");
        assert_eq!(
            (task.calls()[0].reply, task.calls()[0].status),
            (ReplyKind::Hang, 0)
        );
        tokio::time::timeout(Duration::from_secs(2), double.shutdown())
            .await
            .expect("shutdown is not held up by the hanging request");
    }

    #[tokio::test]
    async fn call_log_records_every_protection_request_in_order() {
        let (double, task, client) = start().await;
        task.push_replies([Reply::Normal, Reply::throttled()]);
        put(
            &client,
            &task,
            r#"{"ProtectionEnabled": true, "ExpiresInMinutes": 7}"#,
        )
        .await;
        get_state(&client, &task).await;
        put(&client, &task, r#"{"ProtectionEnabled": true, "Bogus": 1}"#).await;
        put(&client, &task, r#"{"ProtectionEnabled": false}"#).await;

        let calls = task.calls();
        let summary: Vec<_> = calls
            .iter()
            .map(|c| {
                (
                    c.method.as_str(),
                    c.request_enabled,
                    c.expires_in_minutes,
                    c.reply,
                    c.status,
                    c.code.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("PUT", Some(true), Some(7), ReplyKind::Normal, 200, None),
                (
                    "GET",
                    None,
                    None,
                    ReplyKind::Error,
                    400,
                    Some("ThrottlingException")
                ),
                (
                    "PUT",
                    None,
                    None,
                    ReplyKind::BadRequest,
                    400,
                    Some("InvalidParameterException")
                ),
                ("PUT", Some(false), None, ReplyKind::Normal, 200, None),
            ]
        );
        assert!(calls.windows(2).all(|w| w[0].at <= w[1].at));
        double.shutdown().await;
    }

    #[tokio::test]
    async fn default_reply_and_random_faults() {
        let (double, task, client) = start().await;
        task.set_default_reply(Reply::server_error());
        assert_eq!(json_of(get_state(&client, &task).await).await.0, 500);
        task.set_default_reply(Reply::Normal);

        // share 1: every request faults; the same seed gives the same sequence.
        let other = double.add_task(
            CLUSTER,
            "arn:aws:ecs:us-east-1:123456789012:task/test/other",
        );
        let mix = vec![
            Reply::throttled(),
            Reply::PlainText429,
            Reply::task_not_valid(),
        ];
        task.set_random_fault_mix(1.0, 42, mix.clone());
        other.set_random_fault_mix(1.0, 42, mix);
        for t in [&task, &other] {
            for _ in 0..6 {
                get_state(&client, t).await;
            }
        }
        let kinds = |t: &TaskEndpoint| -> Vec<_> {
            t.calls()
                .iter()
                .skip_while(|c| c.status == 500)
                .map(|c| c.reply)
                .collect()
        };
        assert_eq!(kinds(&task), kinds(&other));
        assert!(kinds(&task).iter().all(|k| *k != ReplyKind::Normal));

        task.set_random_faults(0.0, 1);
        assert_eq!(json_of(get_state(&client, &task).await).await.0, 200);
        double.shutdown().await;
    }

    #[tokio::test]
    async fn protection_set_through_the_api_is_what_the_agent_reports() {
        let (double, task, client) = start().await;
        let p = task.set_protection(true, 3);
        assert!(p.enabled);
        let (_, body) = json_of(get_state(&client, &task).await).await;
        assert_eq!(body["protection"]["ProtectionEnabled"], true);
        double.advance_clock(Duration::from_secs(181));
        assert!(!task.protection().enabled, "expired");
        task.set_protection(true, 3);
        assert_eq!(task.set_protection(false, 3), Protection::OFF);
        let (_, body) = json_of(get_state(&client, &task).await).await;
        assert_eq!(body["protection"]["ProtectionEnabled"], false);
        assert_eq!(
            task.calls().len(),
            2,
            "only the agent's own GETs are logged"
        );
        double.shutdown().await;
    }

    #[tokio::test]
    async fn tasks_are_isolated() {
        let (double, task, client) = start().await;
        let other = double.add_task(
            CLUSTER,
            "arn:aws:ecs:us-east-1:123456789012:task/test/other",
        );
        assert_ne!(task.endpoint_id(), other.endpoint_id());
        put(&client, &task, r#"{"ProtectionEnabled": true}"#).await;
        assert!(task.protection().enabled);
        assert!(!other.protection().enabled);
        assert!(other.calls().is_empty());
        double.shutdown().await;
    }

    #[test]
    fn dates_drop_trailing_zeros_like_go() {
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_767_225_900)),
            "2026-01-01T00:05:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_767_225_900_500)),
            "2026-01-01T00:05:00.5Z"
        );
    }
}

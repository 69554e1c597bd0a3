//! A stand-in for one ECS service on this machine, behind the `local-ecs` dev binary and the
//! end-to-end tests: N "tasks", each a child process with its own `ECS_AGENT_URI` and
//! `ECS_CONTAINER_METADATA_URI_V4` served by an [`AgentDouble`], and a scheduler loop that
//! reconciles them with a desired count the way the ECS service scheduler does:
//!
//! - scale-in stops only tasks that are not protected (expired protection counts as released);
//!   while protected tasks keep the service above its desired count it reports
//!   `(service S) was unable to scale in due to (reason N tasks under protection)`, when that
//!   number changes and again every [`BLOCKED_EVENT_EVERY`];
//! - scale-out, and tasks that exit on their own, start new tasks;
//! - [`Control::deploy`] (or `UpdateService` with `forceNewDeployment`) starts a rolling
//!   deployment with the spec's maximum and minimum healthy percent: the new revision's
//!   deployment is PRIMARY, the old one ACTIVE; new tasks start while the service has fewer than
//!   `floor(desired × maximum / 100)` tasks, and old tasks that are not protected stop while at
//!   least `ceil(desired × minimum healthy / 100)` running tasks would remain. With 200/100 all
//!   new tasks start first; with 100/0 (or 50) old tasks are stopped first to make room. While
//!   protected old tasks hold it up, it reports `(service S) was unable to stop old tasks of
//!   deployment N due to (reason K tasks under protection)` like the scale-in event; once no old
//!   task is left, the deployment is COMPLETED and the old one is gone;
//! - stopping is SIGTERM, then SIGKILL after the stop timeout.
//!
//! Each task also gets `AWS_ENDPOINT_URL_ECS`: the service speaks the ECS API
//! ([`ecs_api`], AWS JSON 1.1) for its own cluster, service and tasks, with per-operation
//! denial and throttling ([`EcsFaults`]) and a log of calls per operation and calling task
//! ([`Control::ecs_calls`]). Protection set there is the same state the agent endpoint uses.
//!
//! Everything that happens goes to a timeline ([`Event`]): printed with the elapsed time when
//! asked ([`Echo`]), kept for tests ([`Control::events`]) and, when the spec names a file,
//! appended to it as JSON lines ([`Event::to_json`]), which `scripts/timeline.py` draws.
//!
//! Children are started with `kill_on_drop` in their own process group (a terminal's Ctrl-C
//! reaches `local-ecs` only, which then stops them like ECS would); [`LocalEcs::shutdown`] stops
//! them gracefully, and dropping a [`LocalEcs`] SIGKILLs whatever is left.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::io::{LineWriter, Write};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent_double::{AgentDouble, ReplyKind, TaskEndpoint, DEFAULT_EXPIRES_IN_MINUTES};
use crate::lock;
use crate::ECS_DEFAULT_STOP_TIMEOUT;

pub mod ecs_api;

pub use ecs_api::{CallOutcome, EcsCall, EcsFaults, EcsOperation};

/// Account id in every ARN local-ecs makes up.
pub const ACCOUNT: &str = "123456789012";
/// Region in every ARN local-ecs makes up.
pub const REGION: &str = "us-east-1";
/// ECS returns a service's 100 newest events.
pub const SERVICE_EVENTS_KEPT: usize = 100;
/// ECS keeps describing a stopped task for at least an hour.
const STOPPED_KEPT_FOR: Duration = Duration::from_secs(3600);
/// At most this many stopped tasks are remembered, whatever their age.
const STOPPED_KEPT_MAX: usize = 1000;

/// ECS repeats an unchanged "unable to scale in" service event about this often.
pub const BLOCKED_EVENT_EVERY: Duration = Duration::from_secs(30);
/// How often child exits and protection calls are looked at (the timeline's resolution).
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// After SIGKILL at shutdown, how long to wait for the children to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(5);
/// Default control port of the `local-ecs` binary.
pub const DEFAULT_CONTROL_PORT: u16 = 7470;

/// Where timeline lines go (they are always kept for [`Control::events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    Off,
    Stdout,
    Stderr,
}

/// What to run and how to schedule it.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub service: String,
    pub cluster: String,
    pub desired: usize,
    /// The task's command: program and arguments. The environment is inherited, plus `env`.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// SIGKILL this long after SIGTERM (ECS `stopTimeout`).
    pub stop_timeout: Duration,
    /// How often the scheduler compares the tasks with the desired count.
    pub reconcile_every: Duration,
    /// Each task's stdout and stderr go to `<log_dir>/task-<n>.log`; without it they are copied
    /// to stderr with a `task <n> | ` prefix.
    pub log_dir: Option<PathBuf>,
    pub echo: Echo,
    /// Deployment `maximumPercent`: at most `floor(desired × this / 100)` tasks during one.
    pub maximum_percent: u32,
    /// Deployment `minimumHealthyPercent`: at least `ceil(desired × this / 100)` keep running.
    pub minimum_healthy_percent: u32,
    /// Whether the task metadata reports `ServiceName` (EC2 agents do, Fargate does not).
    pub metadata_service_name: bool,
    /// Task definition family (its revision is the deployment's).
    pub family: String,
    /// The service's tags (DescribeServices with `include: ["TAGS"]`), e.g. Copilot's.
    pub tags: Vec<(String, String)>,
    /// Loopback port of the ECS API (0: any free port).
    pub ecs_port: u16,
    /// ECS API operations denied or throttled from the start (see [`Control::set_ecs_faults`]).
    pub ecs_faults: EcsFaults,
    /// Append every timeline event to this file as one JSON line.
    pub timeline: Option<PathBuf>,
}

impl ServiceSpec {
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>) -> Self {
        Self {
            service: "queue-worker".into(),
            cluster: "local".into(),
            desired: 1,
            program: program.into(),
            args,
            env: Vec::new(),
            stop_timeout: ECS_DEFAULT_STOP_TIMEOUT,
            reconcile_every: Duration::from_secs(2),
            log_dir: None,
            echo: Echo::Stdout,
            maximum_percent: 200,
            minimum_healthy_percent: 100,
            metadata_service_name: false,
            family: crate::agent_double::TASK_FAMILY.into(),
            tags: Vec::new(),
            ecs_port: 0,
            ecs_faults: EcsFaults::default(),
            timeline: None,
        }
    }

    /// `arn:aws:ecs:<region>:<account>:cluster/<cluster>`.
    pub fn cluster_arn(&self) -> String {
        format!("arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{}", self.cluster)
    }

    /// `arn:aws:ecs:<region>:<account>:service/<cluster>/<service>`.
    pub fn service_arn(&self) -> String {
        format!(
            "arn:aws:ecs:{REGION}:{ACCOUNT}:service/{}/{}",
            self.cluster, self.service
        )
    }

    /// `arn:aws:ecs:<region>:<account>:task-definition/<family>:<revision>`.
    pub fn task_definition_arn(&self, revision: u32) -> String {
        format!(
            "arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{}:{revision}",
            self.family
        )
    }
}

/// The deployment settings ECS accepts: minimum healthy 0..=100 %, maximum at least 100 %.
pub fn check_deployment_percents(maximum: u32, minimum_healthy: u32) -> Result<(), String> {
    if minimum_healthy > 100 {
        return Err(format!(
            "minimum healthy percent {minimum_healthy} is above 100"
        ));
    }
    if maximum < 100 {
        return Err(format!("maximum percent {maximum} is below 100"));
    }
    Ok(())
}

/// Why a task was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    ScaleIn,
    Deployment,
    Shutdown,
}

impl StopReason {
    fn as_str(self) -> &'static str {
        match self {
            StopReason::ScaleIn => "scale-in",
            StopReason::Deployment => "deployment",
            StopReason::Shutdown => "local-ecs shutting down",
        }
    }
}

/// One timeline entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Since the service was started.
    pub at: Duration,
    /// Wall clock (to line the timeline up with the tasks' logs).
    pub wall: SystemTime,
    pub kind: EventKind,
    /// The line as printed (without the elapsed-time prefix).
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    DesiredCount {
        from: usize,
        to: usize,
    },
    DeploymentStarted {
        revision: u32,
    },
    TaskStarted {
        task: u32,
        pid: u32,
        revision: u32,
    },
    TaskFailedToStart {
        error: String,
    },
    ProtectionOn {
        task: u32,
        expires_in: Duration,
        refresh: bool,
    },
    ProtectionOff {
        task: u32,
    },
    ProtectionExpired {
        task: u32,
    },
    ScaleInBlocked {
        protected: usize,
    },
    DeploymentBlocked {
        protected: usize,
    },
    /// No task of an older revision is left and the new one runs the desired count.
    DeploymentCompleted {
        revision: u32,
    },
    /// Scale-in or the deployment is no longer held up by protected tasks.
    Unblocked,
    Sigterm {
        task: u32,
        reason: StopReason,
    },
    Sigkill {
        task: u32,
    },
    TaskExited {
        task: u32,
        code: Option<i32>,
        signal: Option<i32>,
        /// false: it exited without being told to (ECS would replace it).
        requested: bool,
    },
    SteadyState,
}

impl Event {
    /// The JSON line of `--timeline`: `at_s` (since the start), `time` (RFC 3339, UTC), `kind`
    /// (kebab-case), the kind's fields, and `text`.
    pub fn to_json(&self) -> Value {
        let mut v = match &self.kind {
            EventKind::DesiredCount { from, to } => {
                json!({"kind": "desired-count", "from": from, "to": to})
            }
            EventKind::DeploymentStarted { revision } => {
                json!({"kind": "deployment-started", "revision": revision})
            }
            EventKind::DeploymentCompleted { revision } => {
                json!({"kind": "deployment-completed", "revision": revision})
            }
            EventKind::TaskStarted {
                task,
                pid,
                revision,
            } => json!({"kind": "task-started", "task": task, "pid": pid, "revision": revision}),
            EventKind::TaskFailedToStart { error } => {
                json!({"kind": "task-failed-to-start", "error": error})
            }
            EventKind::ProtectionOn {
                task,
                expires_in,
                refresh,
            } => json!({
                "kind": "protection-on",
                "task": task,
                "expires_in_s": expires_in.as_secs_f64(),
                "refresh": refresh,
            }),
            EventKind::ProtectionOff { task } => json!({"kind": "protection-off", "task": task}),
            EventKind::ProtectionExpired { task } => {
                json!({"kind": "protection-expired", "task": task})
            }
            EventKind::ScaleInBlocked { protected } => {
                json!({"kind": "scale-in-blocked", "protected": protected})
            }
            EventKind::DeploymentBlocked { protected } => {
                json!({"kind": "deployment-blocked", "protected": protected})
            }
            EventKind::Sigterm { task, reason } => {
                json!({"kind": "sigterm", "task": task, "reason": reason})
            }
            EventKind::Sigkill { task } => json!({"kind": "sigkill", "task": task}),
            EventKind::TaskExited {
                task,
                code,
                signal,
                requested,
            } => json!({
                "kind": "task-exited",
                "task": task,
                "code": code,
                "signal": signal,
                "requested": requested,
            }),
            EventKind::Unblocked => json!({"kind": "unblocked"}),
            EventKind::SteadyState => json!({"kind": "steady-state"}),
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("at_s".into(), json!(self.at.as_secs_f64()));
            o.insert(
                "time".into(),
                json!(humantime::format_rfc3339_millis(self.wall).to_string()),
            );
            o.insert("text".into(), json!(self.text));
        }
        v
    }
}

/// The service as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub service: String,
    pub desired: usize,
    /// Tasks not told to stop.
    pub running: usize,
    /// Tasks told to stop that have not exited yet.
    pub stopping: usize,
    pub revision: u32,
    pub steady: bool,
    /// Total time scale-in (or a deployment) has been held up by protected tasks.
    pub blocked_s: f64,
    pub uptime_s: f64,
    pub tasks: Vec<TaskStatus>,
    /// `AWS_ENDPOINT_URL_ECS` for clients outside the tasks (e.g. `queue-worker ecs watch`).
    #[serde(default)]
    pub ecs_endpoint: String,
    /// The deployments, PRIMARY first (as DescribeServices lists them).
    #[serde(default)]
    pub deployments: Vec<DeploymentStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentStatus {
    pub id: String,
    pub revision: u32,
    /// `PRIMARY` or `ACTIVE`.
    pub status: String,
    /// `IN_PROGRESS` or `COMPLETED`.
    pub rollout_state: String,
    /// Its tasks still running (told to stop or not).
    pub running: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task: u32,
    pub task_arn: String,
    pub pid: u32,
    pub revision: u32,
    pub protected: bool,
    pub protection_expires_in_s: Option<f64>,
    pub stopping: Option<StopReason>,
    pub uptime_s: f64,
}

struct Task {
    n: u32,
    endpoint: TaskEndpoint,
    child: Child,
    pid: u32,
    revision: u32,
    /// The deployment that started it (`startedBy`).
    deployment: String,
    /// On the double's clock, like every time the ECS API reports.
    created_at: SystemTime,
    started: Instant,
    stop: Option<(StopReason, Instant)>,
    killed: bool,
    /// Protection calls already looked at.
    calls_seen: usize,
    /// Protected until, as read from the call log (double's clock).
    protected_until: Option<SystemTime>,
}

impl Task {
    fn protected_now(&self) -> bool {
        self.endpoint.protection().enabled
    }
}

#[derive(Default)]
struct Blocked {
    /// What was last printed, and when.
    last: Option<(bool, usize, Instant)>,
    since: Option<Instant>,
    total: Duration,
}

/// A task that has exited, still described (STOPPED) by the ECS API for a while.
struct StoppedTask {
    n: u32,
    arn: String,
    revision: u32,
    deployment: String,
    created_at: SystemTime,
    stopping_at: Option<SystemTime>,
    stopped_at: SystemTime,
    reason: Option<StopReason>,
    exit_code: Option<i32>,
    forgotten: Instant,
}

/// One deployment of the service (the ECS API's `deployments[]`).
struct Deployment {
    /// `ecs-svc/<19 digits>`.
    id: String,
    revision: u32,
    created_at: SystemTime,
    updated_at: SystemTime,
    completed: bool,
    /// Tasks that could not be started.
    failed_tasks: u32,
}

/// A service event as DescribeServices returns it.
struct ServiceEvent {
    id: String,
    created_at: SystemTime,
    message: String,
}

struct Sched {
    desired: usize,
    revision: u32,
    tasks: Vec<Task>,
    next_task: u32,
    blocked: Blocked,
    steady: bool,
    shutting_down: bool,
    events: Vec<Event>,
    /// Newest first; the first is the PRIMARY deployment, the others are ACTIVE.
    deployments: Vec<Deployment>,
    maximum_percent: u32,
    minimum_healthy_percent: u32,
    /// Newest first, at most [`SERVICE_EVENTS_KEPT`].
    service_events: VecDeque<ServiceEvent>,
    /// Oldest first.
    stopped: VecDeque<StoppedTask>,
    created_at: SystemTime,
}

struct Inner {
    spec: ServiceSpec,
    double: AgentDouble,
    started: Instant,
    started_wall: SystemTime,
    state: Mutex<Sched>,
    wake: Notify,
    /// Copiers of task output (when there is no log dir).
    copiers: TaskTracker,
    /// `http://127.0.0.1:<port>` of the ECS API.
    ecs_endpoint: String,
    api: Mutex<ecs_api::ApiState>,
    timeline: Option<Mutex<LineWriter<std::fs::File>>>,
}

/// A running local service. Stop it with [`LocalEcs::shutdown`]; dropping it SIGKILLs the tasks.
pub struct LocalEcs {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    scheduler: Option<tokio::task::JoinHandle<()>>,
    /// Stops the ECS API, after the tasks (they may call it while they drain).
    api_stop: CancellationToken,
    api: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// A cloneable handle to change and read the service (used by the control server and tests).
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

/// `local-ecs` could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalEcsError {
    #[error("cannot start the agent double: {0}")]
    Agent(std::io::Error),
    #[error("cannot create the log directory {dir}: {source}")]
    LogDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for the ECS API on 127.0.0.1:{port}: {source}")]
    EcsApi { port: u16, source: std::io::Error },
    #[error("cannot create the timeline file {file}: {source}")]
    Timeline {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("bad deployment configuration: {0}")]
    Deployment(String),
}

impl LocalEcs {
    /// Starts the agent double and the scheduler; the first tasks start at once.
    pub async fn start(spec: ServiceSpec) -> Result<LocalEcs, LocalEcsError> {
        if let Some(dir) = &spec.log_dir {
            std::fs::create_dir_all(dir).map_err(|source| LocalEcsError::LogDir {
                dir: dir.clone(),
                source,
            })?;
        }
        check_deployment_percents(spec.maximum_percent, spec.minimum_healthy_percent)
            .map_err(LocalEcsError::Deployment)?;
        let timeline = match &spec.timeline {
            Some(file) => Some(Mutex::new(LineWriter::new(
                std::fs::File::create(file).map_err(|source| LocalEcsError::Timeline {
                    file: file.clone(),
                    source,
                })?,
            ))),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", spec.ecs_port))
            .await
            .and_then(|l| Ok((l.local_addr()?, l)))
            .map_err(|source| LocalEcsError::EcsApi {
                port: spec.ecs_port,
                source,
            })?;
        let (ecs_addr, listener) = listener;
        let double = AgentDouble::start(([127, 0, 0, 1], 0).into())
            .await
            .map_err(LocalEcsError::Agent)?;
        let now = double.now();
        let first = Deployment::new(1, now);
        let inner = Arc::new(Inner {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            state: Mutex::new(Sched {
                desired: spec.desired,
                revision: 1,
                tasks: Vec::new(),
                next_task: 1,
                blocked: Blocked::default(),
                steady: false,
                shutting_down: false,
                events: Vec::new(),
                deployments: vec![first],
                maximum_percent: spec.maximum_percent,
                minimum_healthy_percent: spec.minimum_healthy_percent,
                service_events: VecDeque::new(),
                stopped: VecDeque::new(),
                created_at: now,
            }),
            wake: Notify::new(),
            copiers: TaskTracker::new(),
            ecs_endpoint: format!("http://{ecs_addr}"),
            api: Mutex::new(ecs_api::ApiState::new(spec.ecs_faults.clone())),
            timeline,
            double,
            spec,
        });
        let api_stop = CancellationToken::new();
        let server = axum::serve(listener, ecs_api::router(inner.clone()))
            .with_graceful_shutdown(api_stop.clone().cancelled_owned());
        let api = tokio::spawn(async move { server.await });
        let cancel = CancellationToken::new();
        let scheduler = tokio::spawn(scheduler(inner.clone(), cancel.clone()));
        Ok(LocalEcs {
            inner,
            cancel,
            scheduler: Some(scheduler),
            api_stop,
            api: Some(api),
        })
    }

    pub fn control(&self) -> Control {
        Control {
            inner: self.inner.clone(),
        }
    }

    /// The agent double behind the tasks (e.g. to move its clock so protection expires).
    pub fn agent(&self) -> &AgentDouble {
        &self.inner.double
    }

    /// Stops every task like `StopTask` (SIGTERM, SIGKILL after the stop timeout, protection
    /// ignored) and waits for them to exit.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(h) = self.scheduler.take() {
            let bound = self.inner.spec.stop_timeout + REAP_GRACE * 2;
            if tokio::time::timeout(bound, h).await.is_err() {
                kill_all(&self.inner);
            }
        }
        self.inner.copiers.close();
        let _ = tokio::time::timeout(REAP_GRACE, self.inner.copiers.wait()).await;
        self.api_stop.cancel();
        if let Some(mut api) = self.api.take() {
            if tokio::time::timeout(REAP_GRACE, &mut api).await.is_err() {
                api.abort();
            }
        }
    }

    /// The ECS API's endpoint (`AWS_ENDPOINT_URL_ECS` for clients outside the tasks).
    pub fn ecs_endpoint(&self) -> String {
        self.inner.ecs_endpoint.clone()
    }

    /// SIGKILLs every task now (a second Ctrl-C).
    pub fn kill_now(&self) {
        kill_all(&self.inner);
    }
}

impl Drop for LocalEcs {
    /// No graceful stop here (that is [`LocalEcs::shutdown`]): SIGKILL whatever still runs.
    fn drop(&mut self) {
        self.cancel.cancel();
        self.api_stop.cancel();
        if self.scheduler.is_some() {
            kill_all(&self.inner);
        }
    }
}

fn kill_all(inner: &Inner) {
    for t in lock(&inner.state).tasks.iter_mut() {
        let _ = t.child.start_kill();
    }
}

impl Control {
    pub fn set_desired(&self, desired: usize) {
        let mut st = lock(&self.inner.state);
        let from = st.desired;
        st.desired = desired;
        st.steady = false;
        self.inner.event(
            &mut st,
            EventKind::DesiredCount { from, to: desired },
            format!("desired count {from} -> {desired}"),
        );
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Starts a new revision: every running task gets replaced. Returns the new revision.
    pub fn deploy(&self) -> u32 {
        let mut st = lock(&self.inner.state);
        st.revision += 1;
        st.steady = false;
        let revision = st.revision;
        let now = self.inner.double.now();
        st.deployments.insert(0, Deployment::new(revision, now));
        // A deployment with no task left has nothing to drain: ECS drops it at once.
        let alive: BTreeSet<u32> = st.tasks.iter().map(|t| t.revision).collect();
        st.deployments
            .retain(|d| d.revision == revision || alive.contains(&d.revision));
        let old = st
            .tasks
            .iter()
            .filter(|t| t.stop.is_none() && t.revision < revision)
            .count();
        let id = st.deployments[0].id.clone();
        self.inner.event(
            &mut st,
            EventKind::DeploymentStarted { revision },
            format!("deployment {id} of revision {revision} started: {old} tasks to replace"),
        );
        drop(st);
        self.inner.wake.notify_one();
        revision
    }

    /// Changes the deployment settings (`UpdateService`'s `deploymentConfiguration`).
    pub fn set_deployment_percents(
        &self,
        maximum: u32,
        minimum_healthy: u32,
    ) -> Result<(), String> {
        check_deployment_percents(maximum, minimum_healthy)?;
        let mut st = lock(&self.inner.state);
        st.maximum_percent = maximum;
        st.minimum_healthy_percent = minimum_healthy;
        drop(st);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// The ECS API's endpoint (`AWS_ENDPOINT_URL_ECS` for clients outside the tasks).
    pub fn ecs_endpoint(&self) -> String {
        self.inner.ecs_endpoint.clone()
    }

    /// Every ECS API call so far, in arrival order.
    pub fn ecs_calls(&self) -> Vec<EcsCall> {
        lock(&self.inner.api).calls.clone()
    }

    /// How many calls of `op` arrived, from task `task` (`Some(n)`) or from anyone (`None`);
    /// denied and throttled calls count too.
    pub fn ecs_call_count(&self, op: EcsOperation, task: Option<u32>) -> usize {
        lock(&self.inner.api)
            .calls
            .iter()
            .filter(|c| c.operation == op.as_str() && (task.is_none() || c.task == task))
            .count()
    }

    /// Replaces the denied and throttled operations.
    pub fn set_ecs_faults(&self, faults: EcsFaults) {
        lock(&self.inner.api).set_faults(faults);
    }

    /// The denied and throttled operations now.
    pub fn ecs_faults(&self) -> EcsFaults {
        lock(&self.inner.api).faults.clone()
    }

    pub fn status(&self) -> Status {
        let st = lock(&self.inner.state);
        let now = Instant::now();
        let double_now = self.inner.double.now();
        let blocked = st.blocked.total + st.blocked.since.map_or(Duration::ZERO, |s| now - s);
        Status {
            service: self.inner.spec.service.clone(),
            desired: st.desired,
            running: st.tasks.iter().filter(|t| t.stop.is_none()).count(),
            stopping: st.tasks.iter().filter(|t| t.stop.is_some()).count(),
            revision: st.revision,
            steady: st.steady,
            blocked_s: blocked.as_secs_f64(),
            uptime_s: (now - self.inner.started).as_secs_f64(),
            tasks: st
                .tasks
                .iter()
                .map(|t| {
                    let p = t.endpoint.protection();
                    TaskStatus {
                        task: t.n,
                        task_arn: t.endpoint.task_arn(),
                        pid: t.pid,
                        revision: t.revision,
                        protected: p.enabled,
                        protection_expires_in_s: p.expires_at.and_then(|e| {
                            e.duration_since(double_now).ok().map(|d| d.as_secs_f64())
                        }),
                        stopping: t.stop.map(|(r, _)| r),
                        uptime_s: (now - t.started).as_secs_f64(),
                    }
                })
                .collect(),
            ecs_endpoint: self.inner.ecs_endpoint.clone(),
            deployments: st
                .deployments
                .iter()
                .enumerate()
                .map(|(i, d)| DeploymentStatus {
                    id: d.id.clone(),
                    revision: d.revision,
                    status: if i == 0 { "PRIMARY" } else { "ACTIVE" }.into(),
                    rollout_state: d.rollout_state().into(),
                    running: st.tasks.iter().filter(|t| t.revision == d.revision).count(),
                })
                .collect(),
        }
    }

    /// The timeline so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.inner.state).events.clone()
    }

    /// Pids of the tasks still alive (told to stop or not).
    pub fn pids(&self) -> Vec<(u32, u32)> {
        lock(&self.inner.state)
            .tasks
            .iter()
            .map(|t| (t.n, t.pid))
            .collect()
    }
}

impl Deployment {
    fn new(revision: u32, now: SystemTime) -> Self {
        Self {
            id: format!(
                "ecs-svc/{}",
                fastrand::u64(1_000_000_000_000_000_000..10_000_000_000_000_000_000)
            ),
            revision,
            created_at: now,
            updated_at: now,
            completed: false,
            failed_tasks: 0,
        }
    }

    fn rollout_state(&self) -> &'static str {
        if self.completed {
            "COMPLETED"
        } else {
            "IN_PROGRESS"
        }
    }
}

impl Sched {
    /// The PRIMARY deployment (there is always one).
    fn primary_id(&self) -> String {
        self.deployments
            .first()
            .map(|d| d.id.clone())
            .unwrap_or_default()
    }
}

/// The task id: the last part of its ARN.
fn task_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

impl Inner {
    fn event(&self, st: &mut Sched, kind: EventKind, text: String) {
        let at = self.started.elapsed();
        let line = format!("[{:>6.1}s] {text}", at.as_secs_f64());
        match self.spec.echo {
            Echo::Off => {}
            Echo::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Echo::Stderr => eprintln!("{line}"),
        }
        let event = Event {
            at,
            wall: self.started_wall + at,
            kind,
            text,
        };
        if let Some(file) = &self.timeline {
            // A timeline that cannot be written must not stop the service; the events are
            // still kept in memory.
            let _ = writeln!(lock(file), "{}", event.to_json());
        }
        st.events.push(event);
    }

    /// `at` on the double's clock (the clock of every time the ECS API reports).
    fn wall_of(&self, at: Instant) -> SystemTime {
        let now = self.double.now();
        now.checked_sub(at.elapsed()).unwrap_or(now)
    }

    /// An entry of the service's `events` (what DescribeServices shows; newest first).
    fn service_event(&self, st: &mut Sched, message: String) {
        st.service_events.push_front(ServiceEvent {
            id: crate::agent_double::request_id(),
            created_at: self.double.now(),
            message,
        });
        st.service_events.truncate(SERVICE_EVENTS_KEPT);
    }

    /// A task that could not be started: its agent endpoint goes, an event says why.
    fn failed_to_start(&self, st: &mut Sched, endpoint: &TaskEndpoint, n: u32, error: String) {
        self.double.remove_task(endpoint);
        if let Some(d) = st.deployments.first_mut() {
            d.failed_tasks += 1;
        }
        let message = format!(
            "(service {}) was unable to place a task. Reason: {error}.",
            self.spec.service
        );
        self.service_event(st, message);
        let text = format!("task {n} failed to start: {error}");
        self.event(st, EventKind::TaskFailedToStart { error }, text);
    }

    fn start_task(&self, st: &mut Sched) {
        let n = st.next_task;
        st.next_task += 1;
        let spec = &self.spec;
        let arn = format!(
            "arn:aws:ecs:{REGION}:{ACCOUNT}:task/{}/{:016x}{:016x}",
            spec.cluster,
            fastrand::u64(..),
            fastrand::u64(..)
        );
        let endpoint = self.double.add_task(&spec.cluster_arn(), &arn);
        let revision = st.revision;
        endpoint.update_metadata(|m| {
            m.family = spec.family.clone();
            m.revision = revision.to_string();
            m.service_name = spec.metadata_service_name.then(|| spec.service.clone());
        });
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("ECS_AGENT_URI", endpoint.agent_uri())
            .env("ECS_CONTAINER_METADATA_URI_V4", endpoint.metadata_uri())
            .env(
                "AWS_ENDPOINT_URL_ECS",
                ecs_api::task_endpoint(&self.ecs_endpoint, n),
            )
            .env("LOCAL_ECS_TASK", n.to_string())
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut to_copy = false;
        match &spec.log_dir {
            Some(dir) => {
                let path = dir.join(format!("task-{n}.log"));
                let opened = std::fs::File::create(&path)
                    .and_then(|f| Ok((f.try_clone()?, f)))
                    .map_err(|e| format!("cannot create {}: {e}", path.display()));
                match opened {
                    Ok((out, err)) => {
                        cmd.stdout(out).stderr(err);
                    }
                    Err(error) => return self.failed_to_start(st, &endpoint, n, error),
                }
            }
            None => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                to_copy = true;
            }
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let error = format!("cannot run {}: {e}", spec.program.display());
                return self.failed_to_start(st, &endpoint, n, error);
            }
        };
        if to_copy {
            if let Some(out) = child.stdout.take() {
                self.copiers.spawn(copy_prefixed(out, n));
            }
            if let Some(err) = child.stderr.take() {
                self.copiers.spawn(copy_prefixed(err, n));
            }
        }
        let pid = child.id().unwrap_or(0);
        let deployment = st.primary_id();
        st.tasks.push(Task {
            n,
            endpoint,
            child,
            pid,
            revision,
            deployment,
            created_at: self.double.now(),
            started: Instant::now(),
            stop: None,
            killed: false,
            calls_seen: 0,
            protected_until: None,
        });
        self.event(
            st,
            EventKind::TaskStarted {
                task: n,
                pid,
                revision,
            },
            format!("task {n} started (pid {pid}, revision {revision})"),
        );
        let message = format!(
            "(service {}) has started 1 tasks: (task {}).",
            self.spec.service,
            task_id(&arn)
        );
        self.service_event(st, message);
    }

    fn sigterm(&self, st: &mut Sched, idx: usize, reason: StopReason) {
        let t = &mut st.tasks[idx];
        if t.stop.is_some() {
            return;
        }
        t.stop = Some((reason, Instant::now()));
        t.endpoint
            .update_metadata(|m| m.desired_status = "STOPPED".into());
        let n = t.n;
        let arn = t.endpoint.task_arn();
        let sent = i32::try_from(t.pid)
            .map_err(|_| nix::errno::Errno::ESRCH)
            .and_then(|pid| kill(Pid::from_raw(pid), Signal::SIGTERM));
        let note = match sent {
            Ok(()) => String::new(),
            Err(e) => format!(" (failed: {e})"),
        };
        self.event(
            st,
            EventKind::Sigterm { task: n, reason },
            format!(
                "task {n} stopping ({}): SIGTERM sent{note}",
                reason.as_str()
            ),
        );
        if reason != StopReason::Shutdown {
            let message = format!(
                "(service {}) has stopped 1 running tasks: (task {}).",
                self.spec.service,
                task_id(&arn)
            );
            self.service_event(st, message);
        }
    }

    /// Keeps an exited task describable (STOPPED) for a while, as ECS does.
    fn remember_stopped(&self, st: &mut Sched, t: &Task, exit_code: Option<i32>) {
        let now = Instant::now();
        st.stopped.push_back(StoppedTask {
            n: t.n,
            arn: t.endpoint.task_arn(),
            revision: t.revision,
            deployment: t.deployment.clone(),
            created_at: t.created_at,
            stopping_at: t.stop.map(|(_, at)| self.wall_of(at)),
            stopped_at: self.double.now(),
            reason: t.stop.map(|(r, _)| r),
            exit_code,
            forgotten: now + STOPPED_KEPT_FOR,
        });
        while st.stopped.len() > STOPPED_KEPT_MAX
            || st.stopped.front().is_some_and(|s| s.forgotten <= now)
        {
            st.stopped.pop_front();
        }
    }

    /// Reaps exited tasks, follows protection calls, sends SIGKILL after the stop timeout.
    fn watch(&self, st: &mut Sched) {
        let mut i = 0;
        while i < st.tasks.len() {
            match st.tasks[i].child.try_wait() {
                Ok(Some(status)) => {
                    let t = st.tasks.remove(i);
                    self.double.remove_task(&t.endpoint);
                    self.remember_stopped(st, &t, status.code());
                    self.exited(st, &t, status);
                }
                Ok(None) => i += 1,
                Err(e) => {
                    let t = st.tasks.remove(i);
                    self.double.remove_task(&t.endpoint);
                    self.remember_stopped(st, &t, None);
                    let n = t.n;
                    self.event(
                        st,
                        EventKind::TaskExited {
                            task: n,
                            code: None,
                            signal: None,
                            requested: t.stop.is_some(),
                        },
                        format!("task {n}: cannot read its exit status ({e}); forgetting it"),
                    );
                }
            }
        }
        let now = self.double.now();
        for i in 0..st.tasks.len() {
            let calls = st.tasks[i].endpoint.calls();
            let seen = st.tasks[i].calls_seen;
            st.tasks[i].calls_seen = calls.len();
            for c in calls.iter().skip(seen) {
                if c.method != "PUT" || c.reply != ReplyKind::Normal {
                    continue;
                }
                if let Some(enabled) = c.request_enabled {
                    let minutes = c.expires_in_minutes.unwrap_or(DEFAULT_EXPIRES_IN_MINUTES);
                    self.note_protection(st, i, enabled, c.at, minutes, "");
                }
            }
            if st.tasks[i].protected_until.is_some_and(|u| u <= now) {
                st.tasks[i].protected_until = None;
                let n = st.tasks[i].n;
                self.event(
                    st,
                    EventKind::ProtectionExpired { task: n },
                    format!("task {n} protection expired (not refreshed): it counts as released"),
                );
            }
        }
        let stop_timeout = self.spec.stop_timeout;
        for i in 0..st.tasks.len() {
            let t = &mut st.tasks[i];
            if let Some((_, at)) = t.stop {
                if !t.killed && at.elapsed() >= stop_timeout {
                    t.killed = true;
                    let _ = t.child.start_kill();
                    let n = t.n;
                    self.event(
                        st,
                        EventKind::Sigkill { task: n },
                        format!(
                            "task {n} still running {} after SIGTERM: SIGKILL sent",
                            humantime::format_duration(stop_timeout)
                        ),
                    );
                }
            }
        }
    }

    /// Puts a successful protection call of task `i` (made at `at`) on the timeline.
    fn note_protection(
        &self,
        st: &mut Sched,
        i: usize,
        enabled: bool,
        at: SystemTime,
        minutes: u32,
        via: &str,
    ) {
        let n = st.tasks[i].n;
        if enabled {
            let now = self.double.now();
            let until = at + Duration::from_secs(u64::from(minutes) * 60);
            let refresh = st.tasks[i].protected_until.is_some_and(|u| u > at);
            st.tasks[i].protected_until = Some(until);
            let expires_in = until.duration_since(now).unwrap_or_default();
            let what = if refresh { "refreshed" } else { "on" };
            self.event(
                st,
                EventKind::ProtectionOn {
                    task: n,
                    expires_in,
                    refresh,
                },
                format!(
                    "task {n} protection {what}{via}, expires in {}",
                    humantime::format_duration(Duration::from_secs(
                        expires_in.as_secs_f64().round() as u64
                    ))
                ),
            );
        } else if st.tasks[i].protected_until.take().is_some() {
            self.event(
                st,
                EventKind::ProtectionOff { task: n },
                format!("task {n} protection off{via}"),
            );
        }
    }

    fn exited(&self, st: &mut Sched, t: &Task, status: ExitStatus) {
        use std::os::unix::process::ExitStatusExt;
        let n = t.n;
        let how = match (status.code(), status.signal()) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => format!("exited ({status})"),
        };
        let text = match t.stop {
            Some((_, at)) => format!(
                "task {n} {how}, {:.1}s after SIGTERM (ran {:.1}s)",
                at.elapsed().as_secs_f64(),
                t.started.elapsed().as_secs_f64()
            ),
            None => format!(
                "task {n} {how} on its own after {:.1}s; the scheduler replaces it if needed",
                t.started.elapsed().as_secs_f64()
            ),
        };
        self.event(
            st,
            EventKind::TaskExited {
                task: n,
                code: status.code(),
                signal: status.signal(),
                requested: t.stop.is_some(),
            },
            text,
        );
    }

    /// One pass of the service scheduler.
    fn reconcile(&self, st: &mut Sched) {
        if st.shutting_down {
            for i in 0..st.tasks.len() {
                self.sigterm(st, i, StopReason::Shutdown);
            }
            return;
        }
        let rev = st.revision;
        let desired = st.desired;
        let current = |st: &Sched| -> Vec<usize> {
            (0..st.tasks.len())
                .filter(|&i| st.tasks[i].stop.is_none() && st.tasks[i].revision == rev)
                .collect()
        };
        // Start new tasks (scale-out, replacements of tasks that exited, a deployment's new
        // ones). While older tasks are still alive (a deployment), maximumPercent caps all the
        // service's tasks, those told to stop included: they hold their place until they exit.
        let deploying = st.tasks.iter().any(|t| t.revision < rev);
        let cap = if deploying {
            desired * st.maximum_percent as usize / 100
        } else {
            usize::MAX
        };
        let mut have = current(st).len();
        while have < desired && st.tasks.len() < cap {
            let before = st.tasks.len();
            self.start_task(st);
            if st.tasks.len() == before {
                break; // it failed to start; the next pass tries again
            }
            have += 1;
        }
        // Scale in: only unprotected tasks.
        let cur = current(st);
        let mut blocked: Option<(bool, usize)> = None;
        if cur.len() > desired {
            let excess = cur.len() - desired;
            let (protected, free): (Vec<usize>, Vec<usize>) =
                cur.into_iter().partition(|&i| st.tasks[i].protected_now());
            // Newest first, like a scale-in that keeps the longest-running tasks.
            let mut free = free;
            free.sort_by_key(|&i| std::cmp::Reverse(st.tasks[i].n));
            let stopping = free.len().min(excess);
            for &i in free.iter().take(stopping) {
                self.sigterm(st, i, StopReason::ScaleIn);
            }
            if stopping < excess {
                blocked = Some((false, protected.len()));
            }
        }
        // Deployment: old tasks go, unprotected ones only, while at least minimumHealthyPercent
        // of the desired count would still be running.
        let min_healthy = (desired * st.minimum_healthy_percent as usize).div_ceil(100);
        let mut running = st.tasks.iter().filter(|t| t.stop.is_none()).count();
        let old: Vec<usize> = (0..st.tasks.len())
            .filter(|&i| st.tasks[i].stop.is_none() && st.tasks[i].revision < rev)
            .collect();
        let (held, free): (Vec<usize>, Vec<usize>) =
            old.into_iter().partition(|&i| st.tasks[i].protected_now());
        for i in free {
            if running <= min_healthy {
                break;
            }
            self.sigterm(st, i, StopReason::Deployment);
            running -= 1;
        }
        // Held up by protection only if the health rule would let one more old task go.
        if !held.is_empty() && running > min_healthy && blocked.is_none() {
            blocked = Some((true, held.len()));
        }
        self.report_blocked(st, blocked);
        self.settle_deployments(st);
        let steady = blocked.is_none()
            && st.tasks.len() == desired
            && st
                .tasks
                .iter()
                .all(|t| t.stop.is_none() && t.revision == rev);
        if steady && !st.steady {
            let text = format!(
                "(service {}) has reached a steady state ({} tasks).",
                self.spec.service, desired
            );
            self.event(st, EventKind::SteadyState, text);
            let message = format!(
                "(service {}) has reached a steady state.",
                self.spec.service
            );
            self.service_event(st, message);
        }
        st.steady = steady;
    }

    /// Drops ACTIVE deployments that have no task left, and completes the PRIMARY one once it
    /// runs the desired count and no older task is alive.
    fn settle_deployments(&self, st: &mut Sched) {
        let alive: BTreeSet<u32> = st.tasks.iter().map(|t| t.revision).collect();
        let rev = st.revision;
        st.deployments
            .retain(|d| d.revision == rev || alive.contains(&d.revision));
        let running_new = st
            .tasks
            .iter()
            .filter(|t| t.stop.is_none() && t.revision == rev)
            .count();
        let done = st.deployments.len() == 1 && running_new == st.desired;
        let now = self.double.now();
        let Some(primary) = st.deployments.first_mut() else {
            return;
        };
        if !done || primary.completed {
            return;
        }
        primary.completed = true;
        primary.updated_at = now;
        let id = primary.id.clone();
        self.event(
            st,
            EventKind::DeploymentCompleted { revision: rev },
            format!("deployment {id} of revision {rev} completed"),
        );
        let message = format!(
            "(service {}) (deployment {id}) deployment completed.",
            self.spec.service
        );
        self.service_event(st, message);
    }

    fn report_blocked(&self, st: &mut Sched, blocked: Option<(bool, usize)>) {
        let now = Instant::now();
        match blocked {
            None => {
                if let Some(since) = st.blocked.since.take() {
                    st.blocked.total += now - since;
                    let text = format!(
                        "no longer held up by protected tasks (after {:.1}s)",
                        (now - since).as_secs_f64()
                    );
                    self.event(st, EventKind::Unblocked, text);
                }
                st.blocked.last = None;
            }
            Some((deployment, n)) => {
                st.blocked.since.get_or_insert(now);
                let repeat = match st.blocked.last {
                    Some((d, k, at)) => {
                        d != deployment || k != n || now - at >= BLOCKED_EVENT_EVERY
                    }
                    None => true,
                };
                if repeat {
                    st.blocked.last = Some((deployment, n, now));
                    let service = &self.spec.service;
                    let (kind, text) = if deployment {
                        (
                            EventKind::DeploymentBlocked { protected: n },
                            format!("(service {service}) was unable to stop old tasks of deployment {} due to (reason {n} tasks under protection)", st.revision),
                        )
                    } else {
                        (
                            EventKind::ScaleInBlocked { protected: n },
                            format!("(service {service}) was unable to scale in due to (reason {n} tasks under protection)"),
                        )
                    };
                    self.event(st, kind, text.clone());
                    self.service_event(st, text);
                }
            }
        }
    }
}

async fn copy_prefixed(stream: impl AsyncRead + Unpin, n: u32) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("  task {n} | {line}");
    }
}

async fn scheduler(inner: Arc<Inner>, cancel: CancellationToken) {
    let every = inner.spec.reconcile_every;
    let mut next = tokio::time::Instant::now();
    loop {
        {
            let mut st = lock(&inner.state);
            inner.watch(&mut st);
            if tokio::time::Instant::now() >= next {
                inner.reconcile(&mut st);
                next = tokio::time::Instant::now() + every;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = inner.wake.notified() => next = tokio::time::Instant::now(),
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
    // Shutdown: SIGTERM everything, SIGKILL after the stop timeout (watch does it), reap.
    {
        let mut st = lock(&inner.state);
        st.shutting_down = true;
        inner.reconcile(&mut st);
    }
    let give_up = tokio::time::Instant::now() + inner.spec.stop_timeout + REAP_GRACE;
    loop {
        {
            let mut st = lock(&inner.state);
            inner.watch(&mut st);
            if st.tasks.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= give_up {
                for t in st.tasks.iter_mut() {
                    let _ = t.child.start_kill();
                }
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

// ---- control server and client

#[derive(Debug, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub desired: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeployReply {
    pub revision: u32,
}

/// Serves the control API on `listener` until `shutdown` fires:
/// `GET /status`, `POST /scale {"desired": N}`, `POST /deploy`, `GET /events` (timeline lines;
/// `?format=json`: the events as [`Event::to_json`] objects), `GET /ecs/calls` (the ECS API
/// call log), `GET|PUT /ecs/faults` ([`EcsFaults`]), and the ECS API itself on `POST /`.
pub async fn serve_control(
    control: Control,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/status",
            get(|State(c): State<Control>| async move { Json(c.status()) }),
        )
        .route(
            "/scale",
            post(
                |State(c): State<Control>, Json(r): Json<ScaleRequest>| async move {
                    c.set_desired(r.desired);
                    (StatusCode::OK, Json(c.status()))
                },
            ),
        )
        .route(
            "/deploy",
            post(|State(c): State<Control>| async move {
                Json(DeployReply {
                    revision: c.deploy(),
                })
            }),
        )
        .route(
            "/events",
            get(
                |State(c): State<Control>, RawQuery(q): RawQuery| async move {
                    let events = c.events();
                    let json = q.is_some_and(|q| q.split('&').any(|kv| kv == "format=json"));
                    if json {
                        let all: Vec<Value> = events.iter().map(Event::to_json).collect();
                        return Json(all).into_response();
                    }
                    let lines: Vec<String> = events
                        .into_iter()
                        .map(|e| format!("[{:>6.1}s] {}", e.at.as_secs_f64(), e.text))
                        .collect();
                    Json(lines).into_response()
                },
            ),
        )
        .route(
            "/ecs/calls",
            get(|State(c): State<Control>| async move { Json(c.ecs_calls()) }),
        )
        .route(
            "/ecs/faults",
            get(|State(c): State<Control>| async move { Json(c.ecs_faults()) }).put(
                |State(c): State<Control>, Json(f): Json<EcsFaults>| async move {
                    c.set_ecs_faults(f);
                    Json(c.ecs_faults())
                },
            ),
        )
        .with_state(control.clone())
        .merge(ecs_api::router(control.inner));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Renders a [`Status`] for people.
pub fn format_status(s: &Status) -> String {
    let mut out = format!(
        "service {}: desired {}, running {}, stopping {}, revision {}, {}; scale-in blocked {:.1}s in total\n",
        s.service,
        s.desired,
        s.running,
        s.stopping,
        s.revision,
        if s.steady { "steady" } else { "not steady" },
        s.blocked_s
    );
    for d in &s.deployments {
        out.push_str(&format!(
            "  deployment {} revision {} {} {} ({} tasks)\n",
            d.id, d.revision, d.status, d.rollout_state, d.running
        ));
    }
    for t in &s.tasks {
        let protection = match (t.protected, t.protection_expires_in_s) {
            (true, Some(e)) => format!("protected (expires in {e:.0}s)"),
            (true, None) => "protected".into(),
            _ => "unprotected".into(),
        };
        let state = match t.stopping {
            Some(r) => format!("stopping ({})", r.as_str()),
            None => "running".into(),
        };
        out.push_str(&format!(
            "  task {:<3} pid {:<7} rev {:<3} {:<9} {:<30} up {:.0}s\n",
            t.task, t.pid, t.revision, state, protection, t.uptime_s
        ));
    }
    out
}

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
//! - [`Control::deploy`] replaces tasks like a rolling deployment (minimum healthy 100 %,
//!   maximum 200 %): new tasks first, then old ones as soon as they are unprotected;
//! - stopping is SIGTERM, then SIGKILL after the stop timeout.
//!
//! Everything that happens goes to a timeline ([`Event`]): printed with the elapsed time when
//! asked ([`Echo`]) and kept for tests ([`Control::events`]).
//!
//! Children are started with `kill_on_drop` in their own process group (a terminal's Ctrl-C
//! reaches `local-ecs` only, which then stops them like ECS would); [`LocalEcs::shutdown`] stops
//! them gracefully, and dropping a [`LocalEcs`] SIGKILLs whatever is left.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent_double::{AgentDouble, ReplyKind, TaskEndpoint, DEFAULT_EXPIRES_IN_MINUTES};
use crate::ECS_DEFAULT_STOP_TIMEOUT;

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
        }
    }
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

struct Sched {
    desired: usize,
    revision: u32,
    tasks: Vec<Task>,
    next_task: u32,
    blocked: Blocked,
    steady: bool,
    shutting_down: bool,
    events: Vec<Event>,
}

struct Inner {
    spec: ServiceSpec,
    double: AgentDouble,
    started: Instant,
    state: Mutex<Sched>,
    wake: Notify,
    /// Copiers of task output (when there is no log dir).
    copiers: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running local service. Stop it with [`LocalEcs::shutdown`]; dropping it SIGKILLs the tasks.
pub struct LocalEcs {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    scheduler: Option<tokio::task::JoinHandle<()>>,
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
        let double = AgentDouble::start(([127, 0, 0, 1], 0).into())
            .await
            .map_err(LocalEcsError::Agent)?;
        let inner = Arc::new(Inner {
            double,
            started: Instant::now(),
            state: Mutex::new(Sched {
                desired: spec.desired,
                revision: 1,
                tasks: Vec::new(),
                next_task: 1,
                blocked: Blocked::default(),
                steady: false,
                shutting_down: false,
                events: Vec::new(),
            }),
            wake: Notify::new(),
            copiers: TaskTracker::new(),
            spec,
        });
        let cancel = CancellationToken::new();
        let scheduler = tokio::spawn(scheduler(inner.clone(), cancel.clone()));
        Ok(LocalEcs {
            inner,
            cancel,
            scheduler: Some(scheduler),
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
        let old = st
            .tasks
            .iter()
            .filter(|t| t.stop.is_none() && t.revision < revision)
            .count();
        self.inner.event(
            &mut st,
            EventKind::DeploymentStarted { revision },
            format!("deployment of revision {revision} started: {old} tasks to replace"),
        );
        drop(st);
        self.inner.wake.notify_one();
        revision
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
        st.events.push(Event { at, kind, text });
    }

    /// A task that could not be started: its agent endpoint goes, an event says why.
    fn failed_to_start(&self, st: &mut Sched, endpoint: &TaskEndpoint, n: u32, error: String) {
        self.double.remove_task(endpoint);
        let text = format!("task {n} failed to start: {error}");
        self.event(st, EventKind::TaskFailedToStart { error }, text);
    }

    fn start_task(&self, st: &mut Sched) {
        let n = st.next_task;
        st.next_task += 1;
        let spec = &self.spec;
        let arn = format!(
            "arn:aws:ecs:us-east-1:000000000000:task/{}/{:016x}{:016x}",
            spec.cluster,
            fastrand::u64(..),
            fastrand::u64(..)
        );
        let endpoint = self.double.add_task(&spec.cluster, &arn);
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("ECS_AGENT_URI", endpoint.agent_uri())
            .env("ECS_CONTAINER_METADATA_URI_V4", endpoint.metadata_uri())
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
        let revision = st.revision;
        st.tasks.push(Task {
            n,
            endpoint,
            child,
            pid,
            revision,
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
    }

    fn sigterm(&self, st: &mut Sched, idx: usize, reason: StopReason) {
        let t = &mut st.tasks[idx];
        if t.stop.is_some() {
            return;
        }
        t.stop = Some((reason, Instant::now()));
        let n = t.n;
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
    }

    /// Reaps exited tasks, follows protection calls, sends SIGKILL after the stop timeout.
    fn watch(&self, st: &mut Sched) {
        let mut i = 0;
        while i < st.tasks.len() {
            match st.tasks[i].child.try_wait() {
                Ok(Some(status)) => {
                    let t = st.tasks.remove(i);
                    self.double.remove_task(&t.endpoint);
                    self.exited(st, &t, status);
                }
                Ok(None) => i += 1,
                Err(e) => {
                    let t = st.tasks.remove(i);
                    self.double.remove_task(&t.endpoint);
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
                let n = st.tasks[i].n;
                match c.request_enabled {
                    Some(true) => {
                        let minutes = c.expires_in_minutes.unwrap_or(DEFAULT_EXPIRES_IN_MINUTES);
                        let until = c.at + Duration::from_secs(u64::from(minutes) * 60);
                        let refresh = st.tasks[i].protected_until.is_some_and(|u| u > c.at);
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
                                "task {n} protection {what}, expires in {}",
                                humantime::format_duration(Duration::from_secs(
                                    expires_in.as_secs_f64().round() as u64
                                ))
                            ),
                        );
                    }
                    Some(false) if st.tasks[i].protected_until.take().is_some() => {
                        self.event(
                            st,
                            EventKind::ProtectionOff { task: n },
                            format!("task {n} protection off"),
                        );
                    }
                    _ => {}
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
        let current = |st: &Sched| -> Vec<usize> {
            (0..st.tasks.len())
                .filter(|&i| st.tasks[i].stop.is_none() && st.tasks[i].revision == rev)
                .collect()
        };
        // Scale out (also replaces tasks that exited, and starts a deployment's new tasks).
        let have = current(st).len();
        for _ in have..st.desired {
            self.start_task(st);
        }
        // Scale in: only unprotected tasks.
        let cur = current(st);
        let mut blocked: Option<(bool, usize)> = None;
        if cur.len() > st.desired {
            let excess = cur.len() - st.desired;
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
        // Deployment: old tasks go once the new ones run, and only when unprotected.
        if current(st).len() >= st.desired {
            let old: Vec<usize> = (0..st.tasks.len())
                .filter(|&i| st.tasks[i].stop.is_none() && st.tasks[i].revision < rev)
                .collect();
            let mut held = 0;
            for i in old {
                if st.tasks[i].protected_now() {
                    held += 1;
                } else {
                    self.sigterm(st, i, StopReason::Deployment);
                }
            }
            if held > 0 && blocked.is_none() {
                blocked = Some((true, held));
            }
        }
        self.report_blocked(st, blocked);
        let steady = blocked.is_none()
            && st.tasks.len() == st.desired
            && st
                .tasks
                .iter()
                .all(|t| t.stop.is_none() && t.revision == rev);
        if steady && !st.steady {
            let text = format!(
                "(service {}) has reached a steady state ({} tasks).",
                self.spec.service, st.desired
            );
            self.event(st, EventKind::SteadyState, text);
        }
        st.steady = steady;
    }

    fn report_blocked(&self, st: &mut Sched, blocked: Option<(bool, usize)>) {
        let now = Instant::now();
        match blocked {
            None => {
                if let Some(since) = st.blocked.since.take() {
                    st.blocked.total += now - since;
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
                    self.event(st, kind, text);
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
/// `GET /status`, `POST /scale {"desired": N}`, `POST /deploy`, `GET /events` (timeline lines).
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
            get(|State(c): State<Control>| async move {
                let lines: Vec<String> = c
                    .events()
                    .into_iter()
                    .map(|e| format!("[{:>6.1}s] {}", e.at.as_secs_f64(), e.text))
                    .collect();
                Json(lines)
            }),
        )
        .with_state(control);
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

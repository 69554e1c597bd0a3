//! End to end: `local-ecs` (in process, through its library API) running real `queue-worker`
//! processes against fauxqs. Scale-in waits for protected jobs, an idle fleet goes promptly in
//! both protection modes, a stuck task is stopped once its protection expires, and deployments
//! replace tasks without interrupting jobs, with the rolling settings 200/100 (new tasks first)
//! and 100/0 (old tasks first), idle or held up by a protected job.
//!
//! The workers run with a 1 s shutdown deadline: a task stopped in the middle of a job would
//! cancel it (a "cancelled at the shutdown deadline" log line), so "no job cancelled" really
//! means "no task was stopped mid-job", not "the drain was long enough".

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use testkit::local_ecs::{
    Control, Echo, EcsOperation, EventKind, LocalEcs, ServiceSpec, StopReason,
};

use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

pub(crate) struct Fleet {
    pub(crate) ecs: LocalEcs,
    pub(crate) control: Control,
    pub(crate) logs: PathBuf,
    /// Wall clock when the service started (timeline events are relative to it).
    t0: SystemTime,
}

/// Starts `tasks` workers on `queue` with short timings; `env` overrides.
async fn fleet(tasks: usize, queue: &str, env: &[(&str, &str)]) -> Fleet {
    fleet_with(tasks, queue, env, Echo::Stderr).await
}

/// [`fleet`], with the timeline echoed as `echo` says (the soak keeps it quiet).
pub(crate) async fn fleet_with(
    tasks: usize,
    queue: &str,
    env: &[(&str, &str)],
    echo: Echo,
) -> Fleet {
    fleet_tuned(tasks, queue, env, echo, |_| {}).await
}

/// [`fleet_with`], with the spec changed by `tune` before the service starts.
pub(crate) async fn fleet_tuned(
    tasks: usize,
    queue: &str,
    env: &[(&str, &str)],
    echo: Echo,
    tune: impl FnOnce(&mut ServiceSpec),
) -> Fleet {
    let logs = std::env::temp_dir().join(unique("local-ecs-logs"));
    let mut spec = ServiceSpec::new(worker_bin(), vec![OsString::from("run")]);
    spec.desired = tasks;
    spec.stop_timeout = SECS(10);
    spec.reconcile_every = Duration::from_millis(250);
    spec.log_dir = Some(logs.clone());
    spec.echo = echo;
    let mut all: Vec<(String, String)> = aws_env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    for (k, v) in [
        ("QUEUE_URL", queue),
        ("RUST_LOG", "info"),
        ("WORKER_LOG_FORMAT", "json"),
        ("WORKER_PROTECTION", "agent"),
        ("WORKER_PROTECT", "before-receive"),
        ("WORKER_PROTECTION_DURATION", "1m"),
        ("WORKER_PROTECTION_MIN_HOLD", "0s"),
        ("WORKER_WAIT_TIME", "2s"),
        ("WORKER_IDLE_WINDOW", "1s"),
        ("WORKER_SHUTDOWN_TIMEOUT", "1s"),
        ("WORKER_RETRY_BASE", "1s"),
        ("WORKER_VISIBILITY_TIMEOUT", "30s"),
    ]
    .into_iter()
    .chain(env.iter().copied())
    {
        all.retain(|(key, _)| key != k);
        all.push((k.to_owned(), v.to_owned()));
    }
    spec.env = all
        .into_iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
    tune(&mut spec);
    let t0 = SystemTime::now();
    let ecs = LocalEcs::start(spec).await.expect("local-ecs starts");
    let control = ecs.control();
    Fleet {
        ecs,
        control,
        logs,
        t0,
    }
}

impl Fleet {
    /// Every JSON log line of every task, with the task number.
    pub(crate) fn log_lines(&self) -> Vec<(u32, Value)> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.logs) else {
            return out;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(n) = name
                .strip_prefix("task-")
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            out.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .map(|v| (n, v)),
            );
        }
        out
    }

    /// message id → how many times its job ran to success ("done").
    pub(crate) fn done(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (_, v) in self.log_lines() {
            if v["message"] == "done" {
                if let Some(id) = v["span"]["message_id"].as_str() {
                    *m.entry(id.to_owned()).or_insert(0) += 1;
                }
            }
        }
        m
    }

    pub(crate) fn cancelled(&self) -> usize {
        self.log_lines()
            .iter()
            .filter(|(_, v)| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("cancelled at the shutdown deadline"))
            })
            .count()
    }

    /// Waits (bounded) until `n` workers have logged "worker started".
    pub(crate) async fn wait_started(&self, n: usize) {
        let started = || {
            self.log_lines()
                .iter()
                .filter(|(_, v)| v["message"] == "worker started")
                .count()
        };
        assert!(
            wait_until(SECS(20), || async { started() == n }).await,
            "{n} workers start"
        );
    }

    /// Tasks that are running the job of `duration_ms`.
    fn running_jobs_of(&self, duration_ms: u64) -> Vec<u32> {
        let needle = format!("working for {duration_ms} ms");
        self.log_lines()
            .into_iter()
            .filter(|(_, v)| v["message"] == needle.as_str())
            .map(|(n, _)| n)
            .collect()
    }

    /// Waits until no task is left; how long that took.
    async fn wait_all_gone(&self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        let c = self.control.clone();
        wait_until(timeout, || {
            let c = c.clone();
            async move { c.status().tasks.is_empty() }
        })
        .await
        .then(|| started.elapsed())
    }

    pub(crate) async fn finish(self) {
        let logs = self.logs.clone();
        tokio::time::timeout(SECS(30), self.ecs.shutdown())
            .await
            .expect("local-ecs shuts down");
        let _ = std::fs::remove_dir_all(&logs);
    }
}

fn timestamp(v: &Value) -> SystemTime {
    humantime::parse_rfc3339_weak(v["timestamp"].as_str().expect("timestamp")).expect("rfc3339")
}

fn sigterms(c: &Control) -> HashMap<u32, Duration> {
    c.events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Sigterm { task, .. } => Some((task, e.at)),
            _ => None,
        })
        .collect()
}

fn cleanup_dir(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_waits_for_long_jobs_and_loses_nothing() {
    let c = client();
    let q = create_queue(&c, "e2e-scale", &[]).await;
    let f = fleet(2, &q, &[]).await;
    f.wait_started(2).await;
    let mut bodies = vec!["6s"; 2];
    bodies.extend(["200ms"; 8]);
    let ids = send_bodies(&c, &q, &bodies).await;
    assert!(
        wait_until(SECS(15), || async { f.running_jobs_of(6000).len() == 2 }).await,
        "the long jobs start"
    );
    f.control.set_desired(0);
    let took = f.wait_all_gone(SECS(30)).await.expect("all tasks stop");
    eprintln!(
        "scale to zero with 6 s jobs in flight: all tasks gone {:.1}s after desired 0, scale-in blocked {:.1}s",
        took.as_secs_f64(),
        f.control.status().blocked_s
    );
    let events = f.control.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::ScaleInBlocked { .. })),
        "scale-in was reported blocked"
    );
    // No task got SIGTERM before its last job was done.
    let terms = sigterms(&f.control);
    for (task, v) in f.log_lines() {
        if v["message"] == "done" {
            let term = f.t0 + terms[&task];
            assert!(
                timestamp(&v) <= term + Duration::from_millis(100),
                "task {task} finished a job after its SIGTERM"
            );
        }
    }
    assert_eq!(f.cancelled(), 0, "no job was interrupted");
    let done = f.done();
    assert!(
        ids.iter().all(|id| done.get(id) == Some(&1)),
        "each message processed exactly once: {done:?}"
    );
    assert!(
        wait_until(SECS(5), || async { counts(&c, &q).await == (0, 0) }).await,
        "queue empty"
    );
    for e in &events {
        if let EventKind::TaskExited {
            code, requested, ..
        } = e.kind
        {
            assert!(requested && code == Some(0), "{}", e.text);
        }
    }
    f.finish().await;
}

async fn idle_scale_in(mode: &str) -> Duration {
    let c = client();
    let q = create_queue(&c, "e2e-idle", &[]).await;
    let f = fleet(
        2,
        &q,
        &[
            ("WORKER_PROTECT", mode),
            ("WORKER_WAIT_TIME", "5s"),
            ("WORKER_IDLE_WINDOW", "2s"),
            ("WORKER_PROTECTION_MIN_HOLD", "6s"),
        ],
    )
    .await;
    f.wait_started(2).await;
    // Let them settle into their idle rhythm.
    tokio::time::sleep(SECS(3)).await;
    f.control.set_desired(0);
    let took = f.wait_all_gone(SECS(30)).await.expect("idle tasks stop");
    assert_eq!(f.cancelled(), 0);
    f.finish().await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_fleet_scales_to_zero_promptly_before_receive() {
    let took = idle_scale_in("before-receive").await;
    eprintln!(
        "idle fleet of 2, --protect before-receive (wait 5s, idle window 2s, min hold 6s): gone {:.1}s after desired 0",
        took.as_secs_f64()
    );
    assert!(took < SECS(15), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_fleet_scales_to_zero_promptly_on_receipt() {
    let took = idle_scale_in("on-receipt").await;
    eprintln!(
        "idle fleet of 2, --protect on-receipt (wait 5s): gone {:.1}s after desired 0",
        took.as_secs_f64()
    );
    assert!(took < SECS(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_task_is_stopped_once_its_protection_expires() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let c = client();
    let q = create_queue(&c, "e2e-stuck", &[]).await;
    let f = fleet(1, &q, &[]).await;
    send_bodies(&c, &q, &["10m"]).await;
    assert!(
        wait_until(SECS(20), || async { f.running_jobs_of(600_000).len() == 1 }).await,
        "the job starts"
    );
    let status = f.control.status();
    let task = &status.tasks[0];
    assert!(task.protected, "protected while the job runs");
    // The worker hangs: it can neither finish nor refresh its protection.
    kill(Pid::from_raw(task.pid as i32), Signal::SIGSTOP).expect("SIGSTOP");
    f.control.set_desired(0);
    tokio::time::sleep(SECS(2)).await;
    assert_eq!(f.control.status().tasks.len(), 1, "protected: not stopped");
    assert!(sigterms(&f.control).is_empty());

    // A minute later (on the agent's clock) the protection has expired: the task goes.
    f.ecs.agent().advance_clock(SECS(61));
    let took = f
        .wait_all_gone(SECS(20))
        .await
        .expect("the stuck task is stopped");
    let kinds: Vec<EventKind> = f.control.events().into_iter().map(|e| e.kind).collect();
    let pos = |p: &dyn Fn(&EventKind) -> bool| kinds.iter().position(p);
    let expired = pos(&|k| matches!(k, EventKind::ProtectionExpired { .. })).expect("expired");
    let term = pos(&|k| {
        matches!(
            k,
            EventKind::Sigterm {
                reason: StopReason::ScaleIn,
                ..
            }
        )
    })
    .expect("SIGTERM");
    let killed =
        pos(&|k| matches!(k, EventKind::Sigkill { .. })).expect("SIGKILL (it was stopped)");
    assert!(expired < term && term < killed, "{kinds:?}");
    assert!(kinds.iter().any(|k| matches!(
        k,
        EventKind::TaskExited {
            signal: Some(9),
            ..
        }
    )));
    eprintln!(
        "stuck task: stopped {:.1}s after its protection expired (stop timeout 10s)",
        took.as_secs_f64()
    );
    // The message is not lost: it is in flight until its visibility timeout, then comes back.
    assert_eq!(counts(&c, &q).await, (0, 1));
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_replaces_tasks_without_interrupting_jobs() {
    let c = client();
    let q = create_queue(&c, "e2e-deploy", &[]).await;
    let f = fleet(2, &q, &[("WORKER_PROTECT", "on-receipt")]).await;
    f.wait_started(2).await;
    let mut bodies = vec!["5s"; 2];
    bodies.extend(["100ms"; 6]);
    let ids = send_bodies(&c, &q, &bodies).await;
    assert!(
        wait_until(SECS(15), || async {
            f.running_jobs_of(5000).len() == 2 && counts(&c, &q).await.0 == 0
        })
        .await,
        "the long jobs start"
    );
    let long_tasks = f.running_jobs_of(5000);
    let revision = f.control.deploy();
    assert!(
        wait_until(SECS(30), || async {
            let s = f.control.status();
            s.steady && s.tasks.len() == 2 && s.tasks.iter().all(|t| t.revision == revision)
        })
        .await,
        "the deployment completes: {:?}",
        f.control.status()
    );
    let terms = sigterms(&f.control);
    for (task, v) in f.log_lines() {
        if v["message"] == "done" && terms.contains_key(&task) {
            assert!(
                timestamp(&v) <= f.t0 + terms[&task] + Duration::from_millis(100),
                "task {task} was stopped before its job was done"
            );
        }
    }
    assert!(long_tasks.iter().all(|t| terms.contains_key(t)));
    assert_eq!(f.cancelled(), 0, "no job was interrupted");
    let done = f.done();
    assert!(
        ids.iter().all(|id| done.get(id) == Some(&1)),
        "each message processed exactly once: {done:?}"
    );
    assert!(f
        .control
        .events()
        .iter()
        .any(|e| matches!(e.kind, EventKind::DeploymentBlocked { .. })));
    eprintln!(
        "deploy: 2 tasks replaced, old ones held {:.1}s by protection",
        f.control.status().blocked_s
    );
    let logs = f.logs.clone();
    f.finish().await;
    cleanup_dir(&logs);
}

/// Most tasks alive and fewest running (not told to stop) from the deployment of revision 2 on.
fn deployment_extremes(c: &Control) -> (usize, usize) {
    let events = c.events();
    let from = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::DeploymentStarted { revision: 2 }))
        .expect("deployment started");
    let (mut alive, mut running) = (0usize, 0usize);
    let (mut most, mut fewest) = (0, usize::MAX);
    for (i, e) in events.iter().enumerate() {
        match e.kind {
            EventKind::TaskStarted { .. } => {
                alive += 1;
                running += 1;
            }
            EventKind::Sigterm { .. } => running -= 1,
            EventKind::TaskExited { .. } => alive -= 1,
            _ => {}
        }
        if i >= from {
            most = most.max(alive);
            fewest = fewest.min(running);
        }
    }
    (most, fewest)
}

/// The position in the timeline of the first SIGTERM of a deployment.
fn first_deployment_stop(c: &Control) -> usize {
    first(c, |k| {
        matches!(
            k,
            EventKind::Sigterm {
                reason: StopReason::Deployment,
                ..
            }
        )
    })
}

/// The position in the timeline of the first event that `p` matches.
fn first(c: &Control, p: impl Fn(&EventKind) -> bool) -> usize {
    c.events()
        .iter()
        .position(|e| p(&e.kind))
        .expect("event in the timeline")
}

async fn wait_deployed(f: &Fleet, revision: u32, timeout: Duration) {
    assert!(
        wait_until(timeout, || async {
            let s = f.control.status();
            s.steady
                && s.tasks.len() == 2
                && s.tasks.iter().all(|t| t.revision == revision)
                && s.deployments.len() == 1
                && s.deployments[0].rollout_state == "COMPLETED"
        })
        .await,
        "the deployment completes: {:?}",
        f.control.status()
    );
    assert!(f.control.events().iter().any(|e| matches!(
        e.kind,
        EventKind::DeploymentCompleted { revision: r } if r == revision
    )));
}

/// Idle workers release protection, so a deployment goes through with either setting.
async fn idle_deploy(max: u32, min: u32) -> Fleet {
    let c = client();
    let q = create_queue(&c, "e2e-deploy-idle", &[]).await;
    let f = fleet_tuned(2, &q, &[], Echo::Stderr, |s| {
        s.maximum_percent = max;
        s.minimum_healthy_percent = min;
    })
    .await;
    f.wait_started(2).await;
    let revision = f.control.deploy();
    wait_deployed(&f, revision, SECS(40)).await;
    assert_eq!(f.cancelled(), 0);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_200_100_of_idle_tasks_starts_the_new_ones_first() {
    let f = idle_deploy(200, 100).await;
    let c = &f.control;
    let second_new = first(c, |k| matches!(k, EventKind::TaskStarted { task: 4, .. }));
    let first_stop = first_deployment_stop(c);
    assert!(second_new < first_stop, "new tasks first: {:?}", c.events());
    assert_eq!(deployment_extremes(c), (4, 2));
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_100_0_of_idle_tasks_stops_the_old_ones_first() {
    let f = idle_deploy(100, 0).await;
    let c = &f.control;
    let first_new = first(c, |k| matches!(k, EventKind::TaskStarted { task: 3, .. }));
    let first_stop = first_deployment_stop(c);
    assert!(first_stop < first_new, "old tasks first: {:?}", c.events());
    let (most, _) = deployment_extremes(c);
    assert_eq!(most, 2, "never above 100 %");
    f.finish().await;
}

/// 100/0 with one task busy on a protected 6 s job: the idle task makes room for one new task;
/// the busy one holds the deployment up until its job is done, and no job is interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_100_0_waits_for_the_protected_job_then_completes() {
    let c = client();
    let q = create_queue(&c, "e2e-deploy-held", &[]).await;
    let f = fleet_tuned(
        2,
        &q,
        &[("WORKER_PROTECT", "on-receipt")],
        Echo::Stderr,
        |s| {
            s.maximum_percent = 100;
            s.minimum_healthy_percent = 0;
        },
    )
    .await;
    f.wait_started(2).await;
    let ids = send_bodies(&c, &q, &["6s"]).await;
    assert!(
        wait_until(SECS(15), || async { f.running_jobs_of(6000).len() == 1 }).await,
        "the long job starts"
    );
    let busy = f.running_jobs_of(6000)[0];
    assert!(
        wait_until(SECS(5), || async {
            f.control
                .status()
                .tasks
                .iter()
                .any(|t| t.task == busy && t.protected)
        })
        .await,
        "the busy task is protected"
    );
    let revision = f.control.deploy();
    assert!(
        wait_until(SECS(5), || async {
            f.control
                .events()
                .iter()
                .any(|e| matches!(e.kind, EventKind::DeploymentBlocked { protected: 1 }))
        })
        .await,
        "held up by the protected task: {:?}",
        f.control.events()
    );
    let s = f.control.status();
    assert!(
        s.tasks
            .iter()
            .any(|t| t.task == busy && t.stopping.is_none()),
        "{s:?}"
    );
    wait_deployed(&f, revision, SECS(40)).await;

    let terms = sigterms(&f.control);
    for (task, v) in f.log_lines() {
        if v["message"] == "done" && task == busy {
            assert!(
                timestamp(&v) <= f.t0 + terms[&task] + Duration::from_millis(100),
                "task {task} was stopped before its job was done"
            );
        }
    }
    assert_eq!(f.cancelled(), 0, "no job was interrupted");
    assert_eq!(f.done().get(&ids[0]), Some(&1));
    let ctl = &f.control;
    let idle = if busy == 1 { 2 } else { 1 };
    let idle_exit = first(
        ctl,
        |k| matches!(k, EventKind::TaskExited { task, .. } if *task == idle),
    );
    let new_start = first(ctl, |k| matches!(k, EventKind::TaskStarted { task: 3, .. }));
    let busy_stop = first(
        ctl,
        |k| matches!(k, EventKind::Sigterm { task, .. } if *task == busy),
    );
    assert!(
        idle_exit < new_start && new_start < busy_stop,
        "{:?}",
        ctl.events()
    );
    assert_eq!(deployment_extremes(ctl).0, 2, "never above 100 %");
    eprintln!(
        "deploy 100/0: old busy task held the deployment {:.1}s",
        f.control.status().blocked_s
    );
    f.finish().await;
}

/// `queue-worker ecs scale --desired 0 --watch` against local-ecs's ECS API (found by its
/// Copilot tags): it sees scale-in held up by the protected job, then the service settle at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_scale_watch_follows_local_ecs_to_zero() {
    let c = client();
    let q = create_queue(&c, "e2e-ecs-scale", &[]).await;
    let f = fleet_tuned(
        2,
        &q,
        &[("WORKER_PROTECT", "on-receipt")],
        Echo::Stderr,
        |s| {
            s.tags = vec![
                ("copilot-application".into(), "app".into()),
                ("copilot-environment".into(), "test".into()),
                ("copilot-service".into(), "worker".into()),
            ];
        },
    )
    .await;
    f.wait_started(2).await;
    send_bodies(&c, &q, &["4s"]).await;
    assert!(
        wait_until(SECS(15), || async { f.running_jobs_of(4000).len() == 1 }).await,
        "the long job starts"
    );
    let mut env = crate::ecs::env_for(&fauxqs().endpoint);
    env.push(("AWS_ENDPOINT_URL_ECS", f.control.ecs_endpoint()));
    let args = [
        "ecs",
        "scale",
        "--app",
        "app",
        "--env",
        "test",
        "--name",
        "worker",
        "--desired",
        "0",
        "--watch",
        "--interval",
        "300ms",
        "--timeout",
        "40s",
    ];
    let (code, stdout, stderr) = crate::ecs::run(&env, &args).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("was unable to scale in due to (reason 1 tasks under protection)"),
        "{stdout}"
    );
    assert!(stdout.contains("1 protected"), "{stdout}");
    assert!(stdout.contains("running 0 / desired 0"), "{stdout}");
    assert!(f.control.status().tasks.is_empty());
    assert_eq!(f.cancelled(), 0);
    assert!(f.control.ecs_call_count(EcsOperation::UpdateService, None) == 1);
    assert!(
        f.control
            .ecs_call_count(EcsOperation::GetTaskProtection, None)
            >= 1
    );
    f.finish().await;
}

//! Yielding to ECS under load, end to end: real `queue-worker` processes under `local-ecs` (its
//! ECS API, task metadata and scheduler), a queue that never empties (2 s jobs, concurrency 4
//! per task). A deployment (both `maximumPercent` settings), a scale-in, a large scale-in and a
//! scale to zero each complete while the backlog stays in the queue, and in every run no job is
//! interrupted, none is lost, none runs twice.
//!
//! Each scenario reports its figures (`target/drill-reports/yield-*.json`, printed by
//! `scripts/test.sh` and by `scripts/yield-check.sh`), among them how long the change took
//! against the bound *longest job + one poll period + 2 reconciles*.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::local_ecs::{Echo, EcsOperation, EventKind};

use crate::local_ecs::{fleet_tuned, Fleet};
use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// Each job's length, and the body that asks for it.
const JOB: Duration = Duration::from_secs(2);
const JOB_BODY: &str = "2s";
const CONCURRENCY: usize = 4;
/// The worker's `--yield-poll`.
const POLL: Duration = Duration::from_secs(1);
/// local-ecs's reconcile period in these tests (`fleet_tuned`).
const RECONCILE: Duration = Duration::from_millis(250);

/// The change's bound: the longest job, one poll period (with its jitter), two reconciles.
fn bound() -> Duration {
    JOB + POLL.mul_f64(1.2) + RECONCILE * 2
}

/// A fleet of `tasks` workers on a queue of `backlog` 2 s jobs, every task busy.
async fn busy_fleet(
    name: &str,
    tasks: usize,
    backlog: usize,
    tune: impl FnOnce(&mut testkit::local_ecs::ServiceSpec),
) -> (Fleet, String, Vec<String>) {
    let c = client();
    let q = create_queue(&c, name, &[]).await;
    let bodies = vec![JOB_BODY; backlog];
    let sent = send_bodies(&c, &q, &bodies).await;
    let concurrency = CONCURRENCY.to_string();
    let poll = format!("{}ms", POLL.as_millis());
    let env = [
        ("WORKER_CONCURRENCY", concurrency.as_str()),
        ("WORKER_YIELD_POLL", poll.as_str()),
        ("WORKER_WAIT_TIME", "1s"),
    ];
    let f = fleet_tuned(tasks, &q, &env, Echo::Stderr, tune).await;
    f.wait_started(tasks).await;
    let busy = || {
        let mut per_task: HashMap<u32, usize> = HashMap::new();
        for (task, v) in f.log_lines() {
            if v["message"] == "working for 2000 ms" {
                *per_task.entry(task).or_default() += 1;
            }
        }
        per_task.len() == tasks
    };
    assert!(
        wait_until(SECS(20), || async { busy() }).await,
        "every task busy"
    );
    (f, q, sent)
}

/// Per task, the spans (start, end) during which it yielded, from the workers' own log lines.
fn yields(f: &Fleet) -> BTreeMap<u32, Vec<(Instant, Option<Instant>)>> {
    let mut lines: Vec<(u32, std::time::SystemTime, String)> = f
        .log_lines()
        .into_iter()
        .filter_map(|(task, v)| {
            let y = v["yield"].as_str()?.to_string();
            let t = humantime::parse_rfc3339_weak(v["timestamp"].as_str()?).ok()?;
            Some((task, t, y))
        })
        .collect();
    lines.sort_by_key(|l| l.1);
    // Wall-clock times made comparable as instants from a common origin.
    let origin = (Instant::now(), std::time::SystemTime::now());
    let at = |t: std::time::SystemTime| {
        let back = origin.1.duration_since(t).unwrap_or_default();
        origin.0.checked_sub(back).unwrap_or(origin.0)
    };
    let mut out: BTreeMap<u32, Vec<(Instant, Option<Instant>)>> = BTreeMap::new();
    for (task, t, y) in lines {
        let spans = out.entry(task).or_default();
        match y.as_str() {
            "start" => spans.push((at(t), None)),
            _ => {
                if let Some(last) = spans.last_mut().filter(|s| s.1.is_none()) {
                    last.1 = Some(at(t));
                }
            }
        }
    }
    out
}

/// The most tasks yielding at one moment.
fn most_yielding_at_once(spans: &BTreeMap<u32, Vec<(Instant, Option<Instant>)>>) -> usize {
    most_at_once(
        spans
            .values()
            .flatten()
            .map(|s| (s.0, s.1.unwrap_or_else(Instant::now))),
    )
}

/// DescribeServices calls of the busiest task in the last `over` (local-ecs's clock), against
/// what one call per poll period allows (the jitter makes a period as short as 0.8 × poll).
fn describe_services_per_task(f: &Fleet, over: Duration) -> (usize, usize) {
    let now = Duration::from_secs_f64(f.control.status().uptime_s);
    let since = now.saturating_sub(over);
    let mut per_task: HashMap<u32, usize> = HashMap::new();
    for call in f.control.ecs_calls() {
        if call.operation == EcsOperation::DescribeServices.as_str() && call.at >= since {
            if let Some(t) = call.task {
                *per_task.entry(t).or_default() += 1;
            }
        }
    }
    let most = per_task.values().copied().max().unwrap_or(0);
    let allowed = (over.as_secs_f64() / (POLL.as_secs_f64() * 0.8)).ceil() as usize + 1;
    (most, allowed)
}

/// Stops the fleet and checks the books: every message sent is processed once or still on the
/// queue (none received and dropped), no job was interrupted while the change went through.
async fn settle(f: Fleet, q: &str, sent: &[String], cancelled_during_change: usize) -> Value {
    let done = f.done();
    let twice: Vec<_> = done.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "processed twice: {twice:?}");
    f.finish().await;
    // Messages a stopped worker handed back are visible at once; any other wait their
    // visibility timeout out, so count both.
    let (visible, in_flight) = counts(&client(), q).await;
    let left = (visible + in_flight) as usize;
    let sent_ids: BTreeSet<&String> = sent.iter().collect();
    let unknown = done.keys().filter(|id| !sent_ids.contains(id)).count();
    assert_eq!(unknown, 0, "ids nobody sent");
    let lost = sent.len() as i64 - done.len() as i64 - left as i64;
    assert_eq!(lost, 0, "sent = processed + still queued");
    assert_eq!(
        cancelled_during_change, 0,
        "no job interrupted by SIGTERM while ECS had its way"
    );
    assert!(left > 0, "the backlog is still there");
    json!({
        "sent": sent.len(),
        "processed_once": done.len(),
        "processed_twice": twice.len(),
        "still_queued": left,
        "lost": lost,
        "jobs_interrupted": cancelled_during_change,
    })
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

async fn deployment_under_load(max: u32, min: u32) {
    let (f, q, sent) = busy_fleet(&format!("yield-deploy-{max}"), 2, 400, |s| {
        s.maximum_percent = max;
        s.minimum_healthy_percent = min;
    })
    .await;
    let started = Instant::now();
    let revision = f.control.deploy();
    let completed = wait_until(SECS(60), || async {
        f.control.events().iter().any(
            |e| matches!(e.kind, EventKind::DeploymentCompleted { revision: r } if r == revision),
        )
    })
    .await;
    let took = started.elapsed();
    assert!(completed, "the deployment completes under load");
    let cancelled = f.cancelled();
    let spans = yields(&f);
    let (ds_most, ds_allowed) = describe_services_per_task(&f, took);
    let status = f.control.status();
    assert!(status.tasks.iter().all(|t| t.revision == revision));
    let books = settle(f, &q, &sent, cancelled).await;
    report_drill(
        &format!("yield-deploy-{max}-{min}"),
        &json!({
            "setting": format!("maximumPercent {max}, minimumHealthyPercent {min}"),
            "tasks": 2,
            "completed_s": secs(took),
            "bound_s": secs(bound()),
            "old_tasks_yielded": spans.len(),
            "describe_services_most_per_task": ds_most,
            "describe_services_allowed": ds_allowed,
            "books": books,
        }),
    );
    assert!(
        ds_most <= ds_allowed,
        "{ds_most} DescribeServices > {ds_allowed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_at_200_percent_completes_under_load() {
    deployment_under_load(200, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_at_100_percent_completes_under_load() {
    deployment_under_load(100, 0).await;
}

/// Scales a busy fleet of `from` to `to`; returns the report and checks the yields.
async fn scale_in_under_load(from: usize, to: usize) {
    let (f, q, sent) = busy_fleet(&format!("yield-scale-{from}-{to}"), from, 1200, |_| {}).await;
    // An unchanged service first: at most one DescribeServices per task per poll period.
    let steady = POLL * 6;
    tokio::time::sleep(steady).await;
    let (steady_most, steady_allowed) = describe_services_per_task(&f, steady);
    let started = Instant::now();
    f.control.set_desired(to);
    let done = wait_until(SECS(60), || async {
        let s = f.control.status();
        s.tasks.len() == to && s.tasks.iter().all(|t| t.stopping.is_none())
    })
    .await;
    let took = started.elapsed();
    assert!(done, "scale-in {from} -> {to} completes under load");
    let cancelled = f.cancelled();
    let spans = yields(&f);
    let most = most_yielding_at_once(&spans);
    let staying: BTreeSet<u32> = f.control.status().tasks.iter().map(|t| t.task).collect();
    let stayers_yielded: Vec<u32> = staying
        .iter()
        .filter(|t| spans.contains_key(t))
        .copied()
        .collect();
    // The tasks that stay kept taking work: each started a job after the scale-in.
    let busy_after: BTreeSet<u32> = {
        let since = std::time::SystemTime::now() - took;
        f.log_lines()
            .into_iter()
            .filter(|(_, v)| v["message"] == "working for 2000 ms")
            .filter(|(_, v)| {
                v["timestamp"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                    .is_some_and(|t| t > since)
            })
            .map(|(t, _)| t)
            .collect()
    };
    let (ds_most, ds_allowed) = describe_services_per_task(&f, took);
    let books = settle(f, &q, &sent, cancelled).await;
    report_drill(
        &format!("yield-scale-in-{from}-{to}"),
        &json!({
            "from": from,
            "to": to,
            "completed_s": secs(took),
            "bound_s": secs(bound()),
            "tasks_that_yielded": spans.len(),
            "most_yielding_at_once": most,
            "staying_tasks_that_yielded": stayers_yielded,
            "describe_services_most_per_task": ds_most,
            "describe_services_allowed": ds_allowed,
            "unchanged_service_s": secs(steady),
            "unchanged_describe_services_most_per_task": steady_most,
            "unchanged_describe_services_allowed": steady_allowed,
            "books": books,
        }),
    );
    assert!(
        steady_most <= steady_allowed,
        "unchanged service: {steady_most} DescribeServices > {steady_allowed}"
    );
    assert!(
        most <= from - to,
        "{most} tasks yielded at once for an excess of {}",
        from - to
    );
    assert!(
        stayers_yielded.is_empty(),
        "the tasks that stay never stopped taking work: {stayers_yielded:?}"
    );
    assert!(
        staying.iter().all(|t| busy_after.contains(t)),
        "every staying task took work after the scale-in: {busy_after:?} of {staying:?}"
    );
    assert!(
        ds_most <= ds_allowed,
        "{ds_most} DescribeServices > {ds_allowed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_in_from_3_to_1_completes_under_load() {
    scale_in_under_load(3, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_8_scaled_to_4_yields_exactly_the_excess() {
    scale_in_under_load(8, 4).await;
}

/// Scale to zero while the queue is full: every task finishes its running jobs and stops; the
/// backlog stays in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_to_zero_under_load_stops_every_task_and_keeps_the_backlog() {
    let (f, q, sent) = busy_fleet("yield-scale-zero", 2, 400, |_| {}).await;
    let started = Instant::now();
    f.control.set_desired(0);
    let gone = wait_until(SECS(60), || async { f.control.status().tasks.is_empty() }).await;
    let took = started.elapsed();
    assert!(gone, "every task stops");
    let cancelled = f.cancelled();
    let spans = yields(&f);
    let books = settle(f, &q, &sent, cancelled).await;
    report_drill(
        "yield-scale-to-zero",
        &json!({
            "tasks": 2,
            "all_stopped_s": secs(took),
            "bound_s": secs(bound()),
            "tasks_that_yielded": spans.len(),
            "books": books,
        }),
    );
}

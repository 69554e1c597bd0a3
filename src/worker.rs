//! The poll loop and the life of a job.
//!
//! [`run`] starts the helpers (deleter, visibility keeper), runs [`poll_loop`] until `shutdown`
//! fires, then stops in two phases: no more receives, running jobs get until the shutdown
//! deadline, the rest are cancelled and their messages returned at once; deletes are flushed and
//! protection is released last.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Config, ProtectMode};
use crate::handler::{unwrap_sns, Handler, Job, Outcome};
use crate::limits::SQS_MAX_RECEIVE_BATCH;
use crate::observe::{Health, Phase};
use crate::protection::demand::Demand;
use crate::protection::{Protector, Status};
use crate::sqs::{Deleter, PendingDelete, QueueInfo, Received, Sqs, SqsError, VisibilityKeeper};
use crate::stats::{JobDurations, Snapshot, Stats};

/// Extra protection cover asked for beyond a long poll, so messages never arrive unprotected.
const COVER_MARGIN: Duration = Duration::from_secs(5);
/// How long a timed-out job's handler gets to stop after its cancel token fires.
const JOB_STOP_GRACE: Duration = Duration::from_secs(5);
/// At the shutdown deadline, how long handlers get to stop: short, the exit is due.
const DEADLINE_STOP_GRACE: Duration = Duration::from_millis(500);
/// After the shutdown deadline, how long the final calls (returns, deletes, release) may take.
const CLEANUP_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("queue {queue_url} is not usable: {source}; check the URL, the region and the task role's sqs permissions")]
    Queue { queue_url: String, source: SqsError },
    #[error("cannot serve metrics on {addr}: {source}; pick a free port for --metrics-addr / WORKER_METRICS_ADDR")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Everything a job task needs, shared by every queue.
struct Shared<H> {
    config: Config,
    sqs: Sqs,
    handler: Arc<H>,
    /// Fires at the shutdown deadline: running jobs are cancelled.
    deadline: CancellationToken,
    running: Arc<AtomicUsize>,
    health: Arc<Health>,
    durations: Arc<JobDurations>,
}

/// One consumed queue and its helpers.
struct Queue {
    url: String,
    info: QueueInfo,
    keeper: VisibilityKeeper,
    deletes: mpsc::UnboundedSender<PendingDelete>,
}

/// Runs the worker until `shutdown` fires and the drain completes. Returns the final counters.
pub async fn run<H: Handler>(
    config: Config,
    sqs: Sqs,
    protector: Protector,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<Snapshot, WorkerError> {
    let health = Arc::new(Health::for_pollers(
        config.queue_urls().len(),
        config.wait_time,
        config.protection.idle_window,
        config.health_grace,
    ));
    let running = Arc::new(AtomicUsize::new(0));
    let durations = Arc::new(JobDurations::default());
    let observe_stop = CancellationToken::new();
    let observe = match config.metrics_addr {
        Some(addr) => {
            let render = metrics_renderer(Live {
                stats: sqs.stats.clone(),
                running: running.clone(),
                durations: durations.clone(),
                protection: protector.subscribe(),
                calls: protector.calls(),
                health: health.clone(),
            });
            let task = crate::observe::serve(addr, health.clone(), render, observe_stop.clone())
                .await
                .map_err(|source| WorkerError::Metrics { addr, source })?;
            tracing::info!(%addr, "serving /health and /metrics");
            Some(task)
        }
        None => None,
    };
    let result = run_inner(
        config,
        sqs,
        protector,
        handler,
        shutdown,
        (health, running, durations),
    )
    .await;
    observe_stop.cancel();
    if let Some(task) = observe {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "metrics server task failed");
        }
    }
    result
}

async fn run_inner<H: Handler>(
    config: Config,
    sqs: Sqs,
    protector: Protector,
    handler: Arc<H>,
    shutdown: CancellationToken,
    (health, running, durations): (Arc<Health>, Arc<AtomicUsize>, Arc<JobDurations>),
) -> Result<Snapshot, WorkerError> {
    let urls = config.queue_urls();
    let mut infos = Vec::with_capacity(urls.len());
    for url in &urls {
        let inspected = tokio::select! {
            r = sqs.inspect(url) => r,
            // A queue endpoint that never answers must not make the worker deaf to SIGTERM.
            _ = shutdown.cancelled() => return Ok(sqs.stats.snapshot()),
        };
        let info = match inspected {
            Ok(q) => q,
            Err(e) if e.is_permanent() || e.code == "no-code" => {
                return Err(WorkerError::Queue {
                    queue_url: url.clone(),
                    source: e,
                })
            }
            Err(e) => {
                // A missing sqs:GetQueueAttributes must not stop the worker; assume a redrive exists.
                tracing::warn!(queue_url = %url, error = %e, "could not read the queue's attributes; assuming it has a redrive policy");
                QueueInfo {
                    has_redrive: true,
                    fifo: url.ends_with(".fifo"),
                }
            }
        };
        tracing::info!(queue_url = %url, redrive = info.has_redrive, fifo = info.fifo, "consuming queue");
        infos.push(info);
    }
    tracing::info!(
        queues = urls.len(),
        concurrency = config.concurrency,
        protection = if protector.is_enabled() { "on" } else { "off" },
        "worker started"
    );

    let stats = sqs.stats.clone();
    let keeper_stop = CancellationToken::new();
    let helpers = TaskTracker::new();
    let mut deleters = Vec::with_capacity(urls.len());
    let mut queues = Vec::with_capacity(urls.len());
    for (url, info) in urls.into_iter().zip(infos) {
        let deleter = Deleter::start(sqs.clone(), url.clone(), config.delete_linger);
        let keeper = VisibilityKeeper::new(config.visibility_timeout);
        helpers.spawn(
            keeper
                .clone()
                .run(sqs.clone(), url.clone(), keeper_stop.clone()),
        );
        queues.push(Arc::new(Queue {
            url,
            info,
            keeper,
            deletes: deleter.sender(),
        }));
        deleters.push(deleter);
    }

    let shared = Arc::new(Shared {
        config: config.clone(),
        sqs,
        handler,
        deadline: CancellationToken::new(),
        running,
        health,
        durations,
    });
    let jobs = TaskTracker::new();
    let abandon_poll = CancellationToken::new();
    let protector = Arc::new(protector);
    let demand = Arc::new(Demand::new(
        protector.clone(),
        queues.len(),
        shared.running.clone(),
    ));
    // One budget for all queues: the semaphore hands out permits first come, first served.
    let sem = Arc::new(Semaphore::new(config.concurrency));
    let control = TaskTracker::new();
    let pollers = queues.len();
    let active = Arc::new(AtomicUsize::new(pollers));
    for (slot, queue) in queues.into_iter().enumerate() {
        control.spawn(poll_loop(
            shared.clone(),
            Poller {
                queue,
                slot,
                pollers,
                demand: demand.clone(),
                sem: sem.clone(),
                active: active.clone(),
            },
            jobs.clone(),
            shutdown.clone(),
            abandon_poll.clone(),
        ));
    }
    control.close();
    drop(demand);

    shutdown.cancelled().await;
    shared.health.set(Phase::Stopping);
    let deadline = Instant::now() + config.shutdown_timeout;
    let cleanup_by = deadline + CLEANUP_GRACE;
    tracing::info!(
        running = shared.running.load(Ordering::Relaxed),
        timeout_s = config.shutdown_timeout.as_secs_f64(),
        "shutting down: no new messages; waiting for running jobs"
    );
    jobs.close();
    let drain = async {
        jobs.wait().await;
        // No job left to wait for: a long poll still under way is abandoned (a message it would
        // have returned stays invisible until its visibility timeout, then comes back).
        abandon_poll.cancel();
        control.wait().await;
        jobs.wait().await;
    };
    tokio::select! {
        _ = drain => {}
        _ = tokio::time::sleep_until(deadline) => {
            let left = shared.running.load(Ordering::Relaxed);
            tracing::warn!(running = left, "shutdown deadline reached: cancelling running jobs and returning their messages");
            shared.deadline.cancel();
            abandon_poll.cancel();
            if tokio::time::timeout_at(cleanup_by, async { control.wait().await; jobs.wait().await }).await.is_err() {
                tracing::error!("jobs did not stop after cancellation; exiting anyway (their messages come back after the visibility timeout)");
            }
        }
    }
    keeper_stop.cancel();
    helpers.close();
    // Jobs reach the deleter through `shared`; once they are gone, dropping ours lets it finish.
    drop(shared);
    let flush = async {
        futures_util::future::join_all(deleters.into_iter().map(Deleter::flush)).await;
        helpers.wait().await;
    };
    if tokio::time::timeout_at(cleanup_by.max(Instant::now() + CLEANUP_GRACE), flush)
        .await
        .is_err()
    {
        tracing::warn!(
            "pending deletes could not be sent in time; those messages will be delivered again"
        );
    }
    match Arc::try_unwrap(protector) {
        Ok(p) => {
            p.shutdown(cleanup_by.max(Instant::now() + CLEANUP_GRACE))
                .await
        }
        Err(_) => tracing::warn!(
            "poll loop still running at exit; protection is left to expire by itself"
        ),
    }
    let snap = stats.snapshot();
    tracing::info!(
        succeeded = snap.jobs_succeeded,
        failed = snap.jobs_failed,
        cancelled = snap.jobs_cancelled,
        dead_lettered = snap.jobs_dead_lettered,
        received = snap.messages_received,
        deleted = snap.messages_deleted,
        returned = snap.messages_returned,
        receive_requests = snap.receive_requests,
        empty_receives = snap.empty_receives,
        delete_requests = snap.delete_requests,
        visibility_requests = snap.visibility_requests,
        sqs_requests = snap.sqs_requests(),
        "worker stopped"
    );
    Ok(snap)
}

/// Waits for `fut`, or returns `None` if `cancel` fires first.
async fn or_cancel<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        v = fut => Some(v),
        _ = cancel.cancelled() => None,
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// How long a receive waits for more free job slots while jobs run, so it can ask for a fuller
/// batch (fewer receives per message) instead of one message at a time.
const BATCH_FILL_LINGER: Duration = Duration::from_millis(15);

/// Takes up to `max` permits: waits for the first, then, if `busy`, lingers briefly for more.
async fn take_permits(sem: &Arc<Semaphore>, max: usize, busy: bool) -> Vec<OwnedSemaphorePermit> {
    let Ok(first) = sem.clone().acquire_owned().await else {
        return Vec::new();
    };
    let mut permits = vec![first];
    let until = Instant::now() + BATCH_FILL_LINGER;
    while permits.len() < max {
        match sem.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) if busy => {
                match tokio::time::timeout_at(until, sem.clone().acquire_owned()).await {
                    Ok(Ok(p)) => permits.push(p),
                    _ => break,
                }
            }
            Err(_) => break,
        }
    }
    permits
}

/// One queue's poller and what it shares with the others.
struct Poller {
    queue: Arc<Queue>,
    /// This poller's place in `demand`.
    slot: usize,
    pollers: usize,
    demand: Arc<Demand>,
    sem: Arc<Semaphore>,
    /// Pollers whose queue had messages at their last receive.
    active: Arc<AtomicUsize>,
}

async fn poll_loop<H: Handler>(
    shared: Arc<Shared<H>>,
    poller: Poller,
    jobs: TaskTracker,
    shutdown: CancellationToken,
    abandon_poll: CancellationToken,
) {
    let Poller {
        queue,
        slot,
        pollers,
        demand,
        sem,
        active,
    } = poller;
    let cfg = &shared.config;
    let protector = demand.protector();
    let url = queue.url.as_str();
    let mode = cfg.protection.mode;
    let receive_backoff =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(20));
    let mut receive_failures = 0u32;
    // With several queues, a poller whose queue was empty asks for one message at a time, so a
    // quiet queue's long poll ties up one job slot instead of ten.
    let mut quiet = false;
    // before-receive: after an idle release (and its window) the poller long-polls unprotected
    // until messages arrive, then protects before any job starts, as on-receipt does. Re-taking
    // protection for every empty poll would cost agent calls and keep an idle task protected most
    // of the time, so ECS could stop it only inside the idle windows.
    let mut idle_unprotected = false;

    let health = &shared.health;
    loop {
        health.set_for(slot, Phase::WaitingPermits);
        let jobs_running = shared.running.load(Ordering::Acquire) > 0;
        let batch_max = if pollers == 1 {
            SQS_MAX_RECEIVE_BATCH.min(cfg.concurrency)
        } else if quiet {
            1
        } else {
            // Fair share: busy queues split the budget; the semaphore serves them in turn.
            let busy_queues = active.load(Ordering::Relaxed).max(1);
            SQS_MAX_RECEIVE_BATCH
                .min(cfg.concurrency.div_ceil(busy_queues))
                .max(1)
        };
        let Some(permits) = or_cancel(&shutdown, take_permits(&sem, batch_max, jobs_running)).await
        else {
            break;
        };
        if permits.is_empty() {
            break;
        }
        let busy = shared.running.load(Ordering::Acquire) > 0;
        let protect_receive = busy || (mode == ProtectMode::BeforeReceive && !idle_unprotected);
        if protector.is_enabled() && protect_receive {
            if mode == ProtectMode::BeforeReceive && !demand.wait_not_idle(slot, &shutdown).await {
                break;
            }
            let until = Instant::now() + cfg.wait_time + COVER_MARGIN;
            demand.hold(slot, until);
            health.set_for(slot, Phase::WaitingProtection);
            if !protector.wait_covered(&shutdown, until).await {
                break;
            }
        }

        health.set_for(slot, Phase::Receiving);
        let received = tokio::select! {
            r = shared.sqs.receive(url, permits.len(), cfg.wait_time, cfg.visibility_timeout) => r,
            _ = abandon_poll.cancelled() => break,
        };
        let messages = match received {
            Ok(m) => {
                receive_failures = 0;
                health.received();
                m
            }
            Err(e) => {
                let d = receive_backoff.delay(receive_failures);
                receive_failures = receive_failures.saturating_add(1);
                let hint = if e.is_permanent() {
                    " (check the queue URL and the task role's sqs:ReceiveMessage permission)"
                } else {
                    ""
                };
                tracing::warn!(queue_url = url, error = %e, retry_in_ms = d.as_millis() as u64, "receive failed; retrying{hint}");
                drop(permits);
                if or_cancel(&shutdown, tokio::time::sleep(d)).await.is_none() {
                    break;
                }
                continue;
            }
        };
        if shutdown.is_cancelled() {
            if !messages.is_empty() {
                tracing::info!(
                    queue_url = url,
                    count = messages.len(),
                    "shutting down: returning messages received during the last poll"
                );
                shared.sqs.return_now(url, &messages).await;
            }
            break;
        }
        if quiet != messages.is_empty() {
            quiet = messages.is_empty();
            if quiet {
                active.fetch_sub(1, Ordering::Relaxed);
            } else {
                active.fetch_add(1, Ordering::Relaxed);
            }
        }
        if messages.is_empty() {
            drop(permits);
            if shared.running.load(Ordering::Acquire) == 0 && protector.is_enabled() {
                if mode == ProtectMode::BeforeReceive && !idle_unprotected {
                    health.set_for(slot, Phase::Idle);
                    // Idle: release (together with the other pollers), then stay unprotected
                    // for the idle window so that ECS can stop this task.
                    if !demand
                        .idle(slot, cfg.protection.idle_window, &shutdown)
                        .await
                    {
                        break;
                    }
                    idle_unprotected = true;
                } else {
                    demand.release(slot);
                }
            }
            continue;
        }

        // Work again: the next idle spell starts with a release (and its window) once more.
        idle_unprotected = false;
        if (mode == ProtectMode::OnReceipt || !protect_receive) && protector.is_enabled() {
            let until = Instant::now() + COVER_MARGIN;
            demand.hold(slot, until);
            let wait = tokio::time::timeout(
                cfg.visibility_timeout / 2,
                protector.wait_covered(&shutdown, until),
            );
            match wait.await {
                Ok(true) => {}
                Ok(false) => {
                    shared.sqs.return_now(url, &messages).await;
                    break;
                }
                Err(_) => {
                    tracing::warn!(queue_url = url, count = messages.len(), "protection could not be taken for received messages; returning them to the queue");
                    shared.sqs.return_now(url, &messages).await;
                    continue;
                }
            }
        }

        let batch: Vec<(Received, OwnedSemaphorePermit)> =
            messages.into_iter().zip(permits).collect();
        shared.running.fetch_add(batch.len(), Ordering::AcqRel);
        demand.busy();
        if queue.info.fifo {
            // One task per message group: a group's messages run one after another, in order;
            // different groups run in parallel.
            for group in fifo_groups(batch) {
                let keys = group.iter().map(|(m, _)| queue.keeper.track(m)).collect();
                jobs.spawn(run_group(shared.clone(), queue.clone(), group, keys));
            }
        } else {
            for (msg, permit) in batch {
                let key = queue.keeper.track(&msg);
                let span = tracing::info_span!("job", message_id = %msg.message_id, receive_count = msg.receive_count);
                let shared = shared.clone();
                let queue = queue.clone();
                jobs.spawn(async move {
                    run_job(shared, &queue, msg, key).instrument(span).await;
                    drop(permit)
                });
            }
        }
    }
    // A stopped poller must not keep the task protected.
    demand.release(slot);
    tracing::debug!(queue_url = url, "poll loop stopped");
}

/// What happened to a job, for the finishing step.
enum Ending {
    Done(Outcome),
    Cancelled,
}

/// Splits a FIFO batch by `MessageGroupId`, keeping the order of messages within each group.
fn fifo_groups<T>(batch: Vec<(Received, T)>) -> Vec<Vec<(Received, T)>> {
    let mut keys: Vec<Option<String>> = Vec::new();
    let mut groups: Vec<Vec<(Received, T)>> = Vec::new();
    for item in batch {
        let g = item.0.attributes.get("MessageGroupId").cloned();
        match keys.iter().position(|k| *k == g) {
            Some(i) => groups[i].push(item),
            None => {
                keys.push(g);
                groups.push(vec![item]);
            }
        }
    }
    groups
}

/// Runs a FIFO group's messages in order. After a failure the rest go back at once (visibility
/// 0), so SQS hands them out again only after the failed one: the order holds.
async fn run_group<H: Handler>(
    shared: Arc<Shared<H>>,
    queue: Arc<Queue>,
    group: Vec<(Received, OwnedSemaphorePermit)>,
    keys: Vec<u64>,
) {
    let mut rest = group.into_iter().zip(keys);
    while let Some(((msg, permit), key)) = rest.next() {
        let span = tracing::info_span!("job", message_id = %msg.message_id, receive_count = msg.receive_count);
        let ok = run_job(shared.clone(), &queue, msg, key)
            .instrument(span)
            .await;
        drop(permit);
        if !ok {
            let left: Vec<((Received, OwnedSemaphorePermit), u64)> = rest.collect();
            if !left.is_empty() {
                tracing::info!(
                    count = left.len(),
                    "returning the rest of the message group so its order holds"
                );
                for (_, key) in &left {
                    queue.keeper.untrack(*key);
                }
                let msgs: Vec<Received> = left.iter().map(|((m, _), _)| m.clone()).collect();
                shared.sqs.return_now(&queue.url, &msgs).await;
                shared.running.fetch_sub(left.len(), Ordering::AcqRel);
            }
            return;
        }
    }
}

/// Runs one job (its message already tracked under `key`) and settles its message: delete,
/// retry later, dead-letter, or return. True when the job succeeded.
async fn run_job<H: Handler>(
    shared: Arc<Shared<H>>,
    queue: &Queue,
    msg: Received,
    key: u64,
) -> bool {
    Stats::add(&shared.sqs.stats.jobs_started, 1);
    let started = Instant::now();
    // Debug only: one info line per job ("done"/"failed") is what operators read, and each line
    // costs CPU at thousands of messages a second.
    tracing::debug!("message received");
    let ending = match unwrap_sns(&msg.body) {
        Err(e) => Ending::Done(Outcome::permanent(e.to_string())),
        Ok((body, sns_attributes)) => {
            let mut message_attributes = msg.message_attributes.clone();
            message_attributes.extend(sns_attributes);
            let job_token = shared.deadline.child_token();
            let job = Job {
                message_id: msg.message_id.clone(),
                body,
                receive_count: msg.receive_count,
                attributes: msg.attributes.clone(),
                message_attributes,
                cancel: job_token.clone(),
            };
            let work = AssertUnwindSafe(shared.handler.handle(job)).catch_unwind();
            tokio::pin!(work);
            let panicked = |panic: Box<dyn std::any::Any + Send>| {
                Stats::add(&shared.sqs.stats.jobs_panicked, 1);
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Outcome::retry(format!("handler panicked: {what}"))
            };
            tokio::select! {
                // A job that gives up because of the deadline is a cancellation, not a failure:
                // its message goes back at once, without a retry delay.
                biased;
                _ = shared.deadline.cancelled() => {
                    // The job's token fired with the deadline: a moment for the handler to stop
                    // (an exec child gets SIGTERM) before it is dropped (SIGKILL).
                    let _ = tokio::time::timeout(DEADLINE_STOP_GRACE, &mut work).await;
                    Ending::Cancelled
                }
                r = &mut work => Ending::Done(r.unwrap_or_else(panicked)),
                _ = sleep_opt(shared.config.job_timeout) => {
                    job_token.cancel();
                    // Let the handler stop its work (an exec child gets SIGTERM) before dropping it.
                    let _ = tokio::time::timeout(JOB_STOP_GRACE, &mut work).await;
                    Stats::add(&shared.sqs.stats.jobs_timed_out, 1);
                    let limit = humantime::format_duration(shared.config.job_timeout.unwrap_or_default());
                    Ending::Done(Outcome::retry(format!("job timed out after {limit}")))
                }
            }
        }
    };
    let ending = match ending {
        Ending::Done(Outcome::Retry { .. }) if shared.deadline.is_cancelled() => Ending::Cancelled,
        e => e,
    };
    queue.keeper.untrack(key);
    shared.durations.observe(started.elapsed());
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let stats = &shared.sqs.stats;
    let queue_url = &queue.url;
    let succeeded = matches!(ending, Ending::Done(Outcome::Success));
    match ending {
        Ending::Done(Outcome::Success) => {
            Stats::add(&stats.jobs_succeeded, 1);
            tracing::info!(elapsed_ms, "done");
            let p = PendingDelete {
                message_id: msg.message_id.clone(),
                receipt_handle: msg.receipt_handle.clone(),
            };
            if queue.deletes.send(p).is_err() {
                tracing::error!("deleter already stopped; the message will be delivered again");
            }
        }
        // The failure paths await SDK calls, whose futures are several kilobytes: boxed, they
        // stay out of every job's future, which tokio would otherwise copy at each spawn.
        Ending::Done(Outcome::Retry { reason, delay }) => {
            Stats::add(&stats.jobs_failed, 1);
            Box::pin(settle_failure(
                &shared, queue, &msg, &reason, delay, false, elapsed_ms,
            ))
            .await;
        }
        Ending::Done(Outcome::Permanent { reason }) => {
            Stats::add(&stats.jobs_failed, 1);
            Box::pin(settle_failure(
                &shared, queue, &msg, &reason, None, true, elapsed_ms,
            ))
            .await;
        }
        Ending::Cancelled => {
            Stats::add(&stats.jobs_cancelled, 1);
            tracing::warn!(
                elapsed_ms,
                "cancelled at the shutdown deadline; returning the message to the queue now"
            );
            Box::pin(shared.sqs.return_now(queue_url, std::slice::from_ref(&msg))).await;
        }
    }
    shared.running.fetch_sub(1, Ordering::AcqRel);
    succeeded
}

/// A failed job: dead-letter it ourselves when that is our job, otherwise make it visible again
/// after a backoff so the queue's redrive policy can count it.
async fn settle_failure<H: Handler>(
    shared: &Shared<H>,
    queue: &Queue,
    msg: &Received,
    reason: &str,
    delay: Option<Duration>,
    permanent: bool,
    elapsed_ms: u64,
) {
    let cfg = &shared.config;
    if let Some(dlq) = &cfg.dead_letter {
        let exhausted = msg.receive_count >= dlq.max_receives;
        if !queue.info.has_redrive && (permanent || exhausted) {
            match dead_letter(shared, &queue.url, msg, reason, &dlq.queue_url).await {
                Ok(()) => {
                    Stats::add(&shared.sqs.stats.jobs_dead_lettered, 1);
                    tracing::warn!(
                        elapsed_ms,
                        reason,
                        "failed for good; copied to the dead-letter queue and deleted"
                    );
                    let p = PendingDelete {
                        message_id: msg.message_id.clone(),
                        receipt_handle: msg.receipt_handle.clone(),
                    };
                    if queue.deletes.send(p).is_err() {
                        tracing::error!("deleter already stopped; the message will be delivered again (and is already in the DLQ)");
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not copy the message to the dead-letter queue; retrying it later instead")
                }
            }
        }
    }
    let delay = delay.unwrap_or_else(|| cfg.retry.delay(msg.receive_count.saturating_sub(1)));
    let next = if permanent && !queue.info.has_redrive && cfg.dead_letter.is_none() {
        "retrying (no redrive policy and no --dead-letter-queue-url: it will be retried until it expires)"
    } else {
        "retrying"
    };
    tracing::warn!(
        elapsed_ms,
        reason,
        retry_in_s = delay.as_secs(),
        "job failed; {next}"
    );
    if let Err(e) = shared
        .sqs
        .set_visibility(&queue.url, &msg.receipt_handle, delay)
        .await
    {
        tracing::warn!(error = %e, "could not set the retry delay; the message comes back when its visibility timeout ends");
    }
}

async fn dead_letter<H: Handler>(
    shared: &Shared<H>,
    source_queue: &str,
    msg: &Received,
    reason: &str,
    dlq_url: &str,
) -> Result<(), SqsError> {
    let why = [
        ("DeadLetterReason", reason.chars().take(1000).collect()),
        ("DeadLetterSourceQueue", source_queue.to_owned()),
        ("DeadLetterReceiveCount", msg.receive_count.to_string()),
        ("DeadLetterOriginalMessageId", msg.message_id.clone()),
    ];
    shared.sqs.send_dead_letter(dlq_url, msg, &why).await
}

/// What `/metrics` reads.
struct Live {
    stats: Arc<Stats>,
    running: Arc<AtomicUsize>,
    durations: Arc<JobDurations>,
    protection: tokio::sync::watch::Receiver<Status>,
    calls: Arc<crate::protection::CallCounts>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

/// The counters stay plain atomics on the hot path; prometheus-client reads them at scrape time
/// and owns the exposition format.
impl prometheus_client::collector::Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.stats.snapshot();
        counter_family(
            &mut enc,
            "jobs",
            "Jobs by outcome.",
            "outcome",
            &[
                ("started", s.jobs_started),
                ("succeeded", s.jobs_succeeded),
                ("failed", s.jobs_failed),
                ("panicked", s.jobs_panicked),
                ("timed_out", s.jobs_timed_out),
                ("cancelled", s.jobs_cancelled),
                ("dead_lettered", s.jobs_dead_lettered),
            ],
        )?;
        counter_family(
            &mut enc,
            "sqs_requests",
            "SQS requests by operation.",
            "operation",
            &[
                ("ReceiveMessage", s.receive_requests),
                ("DeleteMessageBatch", s.delete_requests),
                ("ChangeMessageVisibility", s.visibility_requests),
                ("SendMessage", s.dead_letter_requests),
            ],
        )?;
        counter_family(
            &mut enc,
            "sqs_errors",
            "Failed SQS requests or batch entries by operation.",
            "operation",
            &[
                ("ReceiveMessage", s.receive_errors),
                ("DeleteMessageBatch", s.delete_errors),
                ("ChangeMessageVisibility", s.visibility_errors),
            ],
        )?;
        counter_family(
            &mut enc,
            "messages",
            "Messages by event.",
            "event",
            &[
                ("received", s.messages_received),
                ("deleted", s.messages_deleted),
                ("returned", s.messages_returned),
                ("visibility_extended", s.visibility_extensions),
            ],
        )?;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        counter_family(
            &mut enc,
            "protection_calls",
            "Protection calls by outcome.",
            "outcome",
            &[
                ("ok", load(&self.calls.ok)),
                ("transient_error", load(&self.calls.transient)),
                ("permanent_error", load(&self.calls.permanent)),
            ],
        )?;
        let (held, expires_in) = match *self.protection.borrow() {
            Status::Held { expires } => (
                1,
                expires
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64(),
            ),
            _ => (0, 0.0),
        };
        gauge(
            &mut enc,
            "jobs_in_flight",
            "Jobs running now.",
            self.running.load(Ordering::Relaxed) as i64,
        )?;
        gauge(
            &mut enc,
            "protection_held",
            "1 while task scale-in protection is held.",
            held,
        )?;
        gauge(
            &mut enc,
            "protection_expires_in_seconds",
            "Seconds until the held protection expires.",
            expires_in,
        )?;
        gauge(
            &mut enc,
            "last_receive_timestamp_seconds",
            "Unix time of the last successful receive.",
            self.health.last_receive_unix_seconds(),
        )?;
        let (buckets, sum) = self.durations.read();
        let count = buckets.iter().map(|b| b.1).sum();
        enc.encode_descriptor(
            "job_duration_seconds",
            "Job run time.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// One unlabelled gauge (integer or float).
fn gauge<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: V,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One counter family with a single label.
fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in samples {
        let labels = [(label, *value)];
        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn metrics_renderer(live: Live) -> crate::observe::Render {
    let mut registry = prometheus_client::registry::Registry::with_prefix("queue_worker");
    registry.register_collector(Box::new(live));
    Arc::new(move || {
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "could not render /metrics");
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, group: &str) -> (Received, ()) {
        let attributes = [("MessageGroupId".to_string(), group.to_string())]
            .into_iter()
            .collect();
        let r = Received {
            message_id: id.into(),
            receipt_handle: id.into(),
            body: String::new(),
            receive_count: 1,
            attributes,
            message_attributes: Default::default(),
            raw_message_attributes: Default::default(),
            received_at: Instant::now(),
        };
        (r, ())
    }

    #[test]
    fn fifo_batches_split_by_group_keeping_order() {
        let batch = vec![
            msg("a1", "a"),
            msg("b1", "b"),
            msg("a2", "a"),
            msg("c1", "c"),
            msg("a3", "a"),
            msg("b2", "b"),
        ];
        let ids: Vec<Vec<String>> = fifo_groups(batch)
            .into_iter()
            .map(|g| g.into_iter().map(|(m, _)| m.message_id).collect())
            .collect();
        assert_eq!(
            ids,
            vec![vec!["a1", "a2", "a3"], vec!["b1", "b2"], vec!["c1"]]
        );
    }
}

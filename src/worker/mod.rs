//! The worker: [`run`] inspects the queues, starts the helpers (a deleter and a visibility
//! keeper per queue, the metrics server), runs one [`poller`] per queue until `shutdown` fires,
//! then stops in two phases: no more receives, running jobs get until the shutdown deadline, the
//! rest are cancelled and their messages returned at once; deletes are flushed and protection is
//! released last.

mod context;
mod demand;
mod job;
mod policy;
mod poller;
mod settle;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::handler::Handler;
use crate::observe::health::{Health, Phase};
use crate::observe::metrics::{self, Live};
use crate::protection::Protector;
use crate::sqs::deleter::Deleter;
use crate::sqs::visibility::VisibilityKeeper;
use crate::sqs::{QueueInfo, Sqs, SqsError};
use crate::stats::{JobDurations, Snapshot};
use crate::yielding::{self, Lever, Yielding};
use context::{Queue, Shared};
use demand::Demand;
pub(crate) use demand::RunningJobs;
use poller::{lanes_for, Flow, Lane, Poller};

/// After the shutdown deadline, how long the final calls (returns, deletes, release) may take.
const CLEANUP_GRACE: Duration = Duration::from_secs(1);

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A queue could not be used at start (wrong URL or region, no permission, unreachable).
    #[error("queue {queue_url} is not usable: {source}; check the URL, the region and the task role's sqs permissions")]
    Queue {
        /// The queue.
        queue_url: String,
        /// What SQS (or the connection to it) said.
        source: SqsError,
    },
    /// `--metrics-addr` could not be listened on.
    #[error("cannot serve metrics on {addr}: {source}; pick a free port for --metrics-addr / WORKER_METRICS_ADDR")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
}

/// What a worker may have beyond [`run`]'s arguments.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Moved by an operator to make the worker drain and resume (`/drain`, `/resume` on the
    /// metrics address move it too).
    pub lever: Lever,
    /// The ECS API client the worker reads its service with, when the config's
    /// [`crate::YieldConfig::ecs_view`] is set (without it, that view is off).
    pub ecs: Option<aws_sdk_ecs::Client>,
}

/// Runs the worker until `shutdown` fires and the drain completes; returns the final counters.
///
/// `handler` runs every job; `protector` holds task protection (use [`Protector::disabled`]
/// outside ECS). Nothing here installs signal handlers: cancel `shutdown` on SIGTERM.
pub async fn run<H: Handler>(
    config: Config,
    sqs: Sqs,
    protector: Protector,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<Snapshot, WorkerError> {
    run_with(
        config,
        sqs,
        protector,
        handler,
        shutdown,
        RunOptions::default(),
    )
    .await
}

/// What the parts of one worker share besides the config and clients.
struct Parts {
    health: Arc<Health>,
    running: Arc<RunningJobs>,
    durations: Arc<JobDurations>,
    yielding: Arc<Yielding>,
}

/// [`run`], with an operator's [`Lever`] and the ECS API client for yielding to deployments and
/// scale-ins.
pub async fn run_with<H: Handler>(
    config: Config,
    sqs: Sqs,
    protector: Protector,
    handler: Arc<H>,
    shutdown: CancellationToken,
    options: RunOptions,
) -> Result<Snapshot, WorkerError> {
    let parts = Parts {
        health: Arc::new(Health::for_pollers(
            config.queue_urls().len(),
            config.wait_time,
            config.protection.idle_window,
            config.health_grace,
        )),
        running: Arc::default(),
        durations: Arc::default(),
        yielding: Arc::default(),
    };
    let observe_stop = CancellationToken::new();
    let observe = match config.metrics_addr {
        Some(addr) => {
            let render = metrics::renderer(Live {
                stats: sqs.stats(),
                running: parts.running.clone(),
                durations: parts.durations.clone(),
                protection: protector.subscribe(),
                calls: protector.calls(),
                health: parts.health.clone(),
                yielding: parts.yielding.clone(),
            });
            let served = crate::observe::serve(
                addr,
                parts.health.clone(),
                render,
                options.lever.clone(),
                observe_stop.clone(),
            );
            let task = served
                .await
                .map_err(|source| WorkerError::Metrics { addr, source })?;
            tracing::info!(%addr, "serving /health and /metrics (and /drain, /resume from this host)");
            Some(task)
        }
        None => None,
    };
    let result = run_inner(config, sqs, protector, handler, shutdown, parts, options).await;
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
    parts: Parts,
    options: RunOptions,
) -> Result<Snapshot, WorkerError> {
    let Parts {
        health,
        running,
        durations,
        yielding,
    } = parts;
    let urls = config.queue_urls();
    let mut infos = Vec::with_capacity(urls.len());
    for url in &urls {
        let inspected = tokio::select! {
            r = sqs.inspect(url) => r,
            // A queue endpoint that never answers must not make the worker deaf to SIGTERM.
            _ = shutdown.cancelled() => return Ok(sqs.stats().snapshot()),
        };
        let info = match inspected {
            Ok(q) => q,
            Err(e) if e.is_fatal_at_start() => {
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

    let stats = sqs.stats();
    let keeper_stop = CancellationToken::new();
    let helpers = TaskTracker::new();
    let mut deleters = Vec::with_capacity(urls.len());
    let mut queues = Vec::with_capacity(urls.len());
    for (url, info) in urls.into_iter().zip(infos) {
        let deleter = Deleter::start(
            sqs.clone(),
            url.clone(),
            config.delete_linger,
            config.concurrency,
        );
        let keeper = VisibilityKeeper::new(config.visibility_timeout);
        helpers.spawn(
            keeper
                .clone()
                .run(sqs.clone(), url.clone(), keeper_stop.clone()),
        );
        queues.push(Arc::new(Queue::new(&url, info, keeper, deleter.sender())));
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
        run_slots: (config.prefetch > 0).then(|| Arc::new(Semaphore::new(config.concurrency))),
    });
    let jobs = TaskTracker::new();
    let abandon_poll = CancellationToken::new();
    let protector = Arc::new(protector);
    // Each queue has one primary lane (its long poll) and, while messages flow, more lanes so
    // that enough receives are in flight to fill the free slots when SQS is a round trip away.
    let lanes_per_queue = lanes_for(config.concurrency + config.prefetch);
    let demand = Arc::new(Demand::new(
        protector.clone(),
        queues.len() * lanes_per_queue,
        shared.running.clone(),
    ));
    // The yield signals: local ones always, the service's view where configured.
    helpers.spawn(yielding::watch_local(
        yielding::Local {
            yielding: yielding.clone(),
            protection: protector.subscribe(),
            running: shared.running.clone(),
            lever: options.lever.clone(),
            max_protected: config.yielding.max_protected,
            idle_window: config.protection.idle_window,
        },
        keeper_stop.clone(),
    ));
    if let (Some(view), Some(ecs)) = (config.yielding.ecs_view.clone(), options.ecs) {
        let (yielding, stop) = (yielding.clone(), keeper_stop.clone());
        helpers.spawn(async move { yielding::view::run(ecs, view, &yielding, stop).await });
    }
    // One budget for all queues: the semaphore hands out permits first come, first served. A
    // message holds its permit from before its receive until its job ends; with prefetch the
    // budget is larger than the job slots, and a message may wait for one of those.
    let sem = Arc::new(Semaphore::new(config.concurrency + config.prefetch));
    let control = TaskTracker::new();
    let pollers = queues.len();
    let active = Arc::new(AtomicUsize::new(pollers));
    for (q, queue) in queues.into_iter().enumerate() {
        let flow = Arc::new(Flow::default());
        for lane in 0..lanes_per_queue {
            let poller = Poller {
                shared: shared.clone(),
                queue: queue.clone(),
                lane: if lane == 0 {
                    Lane::Primary { beat: q }
                } else {
                    Lane::Extra
                },
                slot: q * lanes_per_queue + lane,
                pollers,
                demand: demand.clone(),
                sem: sem.clone(),
                active: active.clone(),
                flow: flow.clone(),
                yielding: yielding.clone(),
                jobs: jobs.clone(),
                shutdown: shutdown.clone(),
                abandon_poll: abandon_poll.clone(),
            };
            control.spawn(poller.run());
        }
    }
    control.close();
    drop(demand);

    shutdown.cancelled().await;
    shared.health.set(Phase::Stopping);
    let deadline = Instant::now() + config.shutdown_timeout;
    let cleanup_by = deadline + CLEANUP_GRACE;
    tracing::info!(
        running = shared.running.count(),
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
            let left = shared.running.count();
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

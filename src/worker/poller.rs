//! One queue's poll loop: take job slots, get protection as the [`ProtectPolicy`] says, receive
//! at most as many messages as there are slots, and start a job per message; while the worker
//! yields to ECS, take nothing and let protection go once the running jobs end.
//!
//! A queue has several *lanes* running this loop. The primary lane is the queue's long poll, the
//! only one while the queue is quiet. While messages flow (a receive came back full), the extra
//! lanes join in, each taking a whole batch of free slots before its receive is sent (the primary
//! lane too, while they flow): with SQS a round trip away, one receive in flight can never fill
//! more than 10 slots per round trip.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::context::{Queue, Shared};
use super::demand::Demand;
use super::job::{self, fifo_groups, run_group, run_job, Turn};
use super::policy::{ProtectPolicy, WhenEmpty};
use crate::backoff::Backoff;
use crate::handler::Handler;
use crate::limits::SQS_MAX_RECEIVE_BATCH;
use crate::observe::health::Phase;
use crate::sqs::Received;
use crate::yielding::Yielding;

/// Extra protection cover asked for beyond a long poll, so messages never arrive unprotected.
const COVER_MARGIN: Duration = Duration::from_secs(5);
/// How long a receive waits for more free job slots while jobs run, so it can ask for a fuller
/// batch (fewer receives per message) instead of one message at a time.
const BATCH_FILL_LINGER: Duration = Duration::from_millis(15);
/// Backoff between failed receives.
const RECEIVE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(20));
/// An extra lane's receive waits at most this long for messages: it only runs while messages
/// flow, and must not tie up its slots in a long poll once the queue runs dry. (A wait of 0,
/// short polling, samples only some of SQS's servers and comes back empty too often.)
const EXTRA_LANE_WAIT: Duration = Duration::from_secs(1);

/// Receive lanes per queue for `concurrency` slots: one per full batch of slots.
pub(super) fn lanes_for(concurrency: usize) -> usize {
    concurrency.div_ceil(SQS_MAX_RECEIVE_BATCH).max(1)
}

/// Whether a queue's messages are flowing: its last receive came back full.
#[derive(Debug, Default)]
pub(super) struct Flow(watch::Sender<bool>);

impl Flow {
    fn set(&self, flowing: bool) {
        self.0
            .send_if_modified(|f| std::mem::replace(f, flowing) != flowing);
    }
}

/// Which of a queue's lanes a poller is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lane {
    /// The queue's long poll; `beat` is its place in the health beats.
    Primary { beat: usize },
    /// Joins in while messages flow, a whole batch of slots at a time.
    Extra,
}

/// Waits for `fut`, or returns `None` if `cancel` fires first.
pub(super) async fn or_cancel<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        v = fut => Some(v),
        _ = cancel.cancelled() => None,
    }
}

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

/// Takes a whole batch of `n` permits (while messages flow, a receive asks for a full batch).
async fn take_batch(sem: &Arc<Semaphore>, n: usize) -> Vec<OwnedSemaphorePermit> {
    let Ok(mut batch) = sem
        .clone()
        .acquire_many_owned(u32::try_from(n.max(1)).unwrap_or(u32::MAX))
        .await
    else {
        return Vec::new();
    };
    // One permit per message: each job gives its own slot back when it ends.
    let mut permits = Vec::with_capacity(n);
    while batch.num_permits() > 1 {
        match batch.split(1) {
            Some(one) => permits.push(one),
            None => break,
        }
    }
    permits.push(batch);
    permits
}

/// How many messages a receive asks for, so that several queues share one budget fairly.
struct FairShare {
    pollers: usize,
    concurrency: usize,
    /// Pollers whose queue had messages at their last receive (shared by all pollers).
    active: Arc<AtomicUsize>,
    /// This poller's queue was empty at its last receive.
    quiet: bool,
}

impl FairShare {
    fn batch_max(&self) -> usize {
        if self.pollers == 1 {
            SQS_MAX_RECEIVE_BATCH.min(self.concurrency)
        } else if self.quiet {
            // A quiet queue's long poll ties up one job slot instead of ten.
            1
        } else {
            // Busy queues split the budget; the semaphore serves them in turn.
            let busy_queues = self.active.load(Ordering::Relaxed).max(1);
            SQS_MAX_RECEIVE_BATCH
                .min(self.concurrency.div_ceil(busy_queues))
                .max(1)
        }
    }

    fn saw(&mut self, empty: bool) {
        if self.quiet != empty {
            self.quiet = empty;
            if empty {
                self.active.fetch_sub(1, Ordering::Relaxed);
            } else {
                self.active.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One queue's poller and what it shares with the others.
pub(super) struct Poller<H> {
    pub shared: Arc<Shared<H>>,
    pub queue: Arc<Queue>,
    /// This lane's place in `demand`.
    pub slot: usize,
    pub pollers: usize,
    pub demand: Arc<Demand>,
    pub sem: Arc<Semaphore>,
    pub active: Arc<AtomicUsize>,
    /// The queue's lane and its flow.
    pub lane: Lane,
    pub flow: Arc<Flow>,
    /// Set while the worker gives way to ECS.
    pub yielding: Arc<Yielding>,
    pub jobs: TaskTracker,
    pub shutdown: CancellationToken,
    /// Fires when a long poll still under way at shutdown is to be abandoned.
    pub abandon_poll: CancellationToken,
}

impl<H: Handler> Poller<H> {
    /// Polls until shutdown (or until a poll is abandoned).
    pub(super) async fn run(self) {
        let primary = matches!(self.lane, Lane::Primary { .. });
        let mut flow = self.flow.0.subscribe();
        let cfg = &self.shared.config;
        let protector = self.demand.protector();
        let mut policy = ProtectPolicy::new(cfg.protection.mode, protector.is_enabled());
        let mut share = FairShare {
            pollers: self.pollers,
            concurrency: cfg.concurrency + cfg.prefetch,
            active: self.active.clone(),
            quiet: false,
        };
        let mut receive_failures = 0u32;
        let (url, slot) = (&*self.queue.url, self.slot);
        let mut yield_rx = self.yielding.subscribe();
        loop {
            if yield_rx.borrow_and_update().is_some() {
                if !self.wait_out_yield().await {
                    break;
                }
                continue;
            }
            if !primary && !*flow.borrow_and_update() {
                // Parked until messages flow again, asking for nothing.
                self.demand.release(slot);
                tokio::select! {
                    r = flow.changed() => if r.is_err() { break },
                    _ = yield_rx.changed() => {}
                    _ = self.shutdown.cancelled() => break,
                }
                continue;
            }
            self.beat(Phase::WaitingPermits);
            let jobs_running = self.jobs_running();
            // While messages flow, every lane's receive asks for a full batch: a short one costs
            // a receive, and then a delete, for fewer messages.
            let flowing = !primary || *flow.borrow_and_update();
            let take = async {
                if !flowing {
                    take_permits(&self.sem, share.batch_max(), jobs_running).await
                } else if primary {
                    take_batch(&self.sem, share.batch_max()).await
                } else {
                    take_batch(&self.sem, SQS_MAX_RECEIVE_BATCH).await
                }
            };
            let mut flow_stops = self.flow.0.subscribe();
            let permits = tokio::select! {
                p = take => p,
                _ = self.shutdown.cancelled() => break,
                // A yield that starts while every slot is busy: take no slot.
                _ = yield_rx.changed() => continue,
                // Waiting for a batch of slots when the flow stops: an extra lane parks, the
                // primary lane takes what is free.
                _ = flow_stops.wait_for(|f| !f), if flowing => continue,
            };
            if permits.is_empty() {
                break;
            }
            let covered = policy.cover_receive(self.jobs_running(), self.demand.in_idle_period());
            if covered {
                let until = Instant::now() + cfg.wait_time + COVER_MARGIN;
                self.demand.hold(slot, until);
                self.beat(Phase::WaitingProtection);
                tokio::select! {
                    ok = protector.wait_covered(&self.shutdown, until) => if !ok { break },
                    // Refused as blocked, say: the worker yields instead of waiting.
                    _ = yield_rx.changed() => continue,
                }
            }

            self.beat(Phase::Receiving);
            let wait = if primary {
                cfg.wait_time
            } else {
                cfg.wait_time.min(EXTRA_LANE_WAIT)
            };
            let receive = self
                .shared
                .sqs
                .receive(url, permits.len(), wait, cfg.visibility_timeout);
            let received = tokio::select! {
                r = receive => r,
                _ = self.abandon_poll.cancelled() => break,
            };
            let messages = match received {
                Ok(m) => {
                    receive_failures = 0;
                    if primary {
                        self.shared.health.received();
                    }
                    m
                }
                Err(e) => {
                    let d = RECEIVE_BACKOFF.delay(receive_failures);
                    receive_failures = receive_failures.saturating_add(1);
                    let hint = if e.is_permanent() {
                        " (check the queue URL and the task role's sqs:ReceiveMessage permission)"
                    } else {
                        ""
                    };
                    tracing::warn!(queue_url = url, error = %e, retry_in_ms = d.as_millis() as u64, "receive failed; retrying{hint}");
                    drop(permits);
                    if or_cancel(&self.shutdown, tokio::time::sleep(d))
                        .await
                        .is_none()
                    {
                        break;
                    }
                    continue;
                }
            };
            if self.shutdown.is_cancelled() {
                self.hand_back(&messages, "shutting down").await;
                break;
            }
            if self.yielding.current().is_some() {
                self.hand_back(&messages, "yielding").await;
                continue;
            }
            // A full batch: more may be waiting, so the extra lanes join in; anything less: the
            // queue is running dry, and they step back.
            self.flow.set(messages.len() == permits.len());
            if primary {
                share.saw(messages.is_empty());
            }
            if messages.is_empty() {
                drop(permits);
                if !primary {
                    self.demand.release(slot);
                } else if !self.jobs_running() && !self.after_empty(&mut policy).await {
                    break;
                }
                continue;
            }

            if policy.cover_after_receipt(covered) {
                match self.cover_received(&messages).await {
                    Covered::Yes => {}
                    Covered::Stop => break,
                    Covered::Returned => continue,
                }
            }
            self.start_jobs(messages.into_iter().zip(permits).collect());
        }
        // A stopped poller must not keep the task protected.
        self.demand.release(slot);
        tracing::debug!(queue_url = url, "poll loop stopped");
    }

    /// How this poller's messages wait for a job slot (with prefetch).
    fn turn(&self) -> Turn {
        Turn {
            slots: self.shared.run_slots.clone(),
            shutdown: self.shutdown.clone(),
            yielding: self.yielding.clone(),
        }
    }

    fn jobs_running(&self) -> bool {
        self.shared.running.any()
    }

    /// Messages that arrived when they can no longer start: back to the queue at once.
    async fn hand_back(&self, messages: &[Received], why: &str) {
        if messages.is_empty() {
            return;
        }
        let url = &*self.queue.url;
        tracing::info!(
            queue_url = url,
            count = messages.len(),
            "{why}: returning messages received during the last poll"
        );
        self.shared.sqs.return_now(url, messages).await;
    }

    /// The primary lane's heartbeat for `/health` (the extra lanes come and go).
    fn beat(&self, phase: Phase) {
        if let Lane::Primary { beat } = self.lane {
            self.shared.health.set_for(beat, phase);
        }
    }

    /// An empty receive with no job running: release or go idle as the policy says. False if
    /// shutdown came first.
    async fn after_empty(&self, policy: &mut ProtectPolicy) -> bool {
        match policy.when_empty() {
            WhenEmpty::Nothing => true,
            WhenEmpty::Release => {
                self.demand.release(self.slot);
                true
            }
            WhenEmpty::GoIdle => {
                // Let go (together with the other pollers). While the grant still holds, go on
                // receiving under it; once it is released, stay unprotected for the idle window
                // so that ECS can stop this task.
                self.demand.open_idle(self.slot);
                if self.demand.protection_held() {
                    return true;
                }
                self.shared.health.set_for(self.slot, Phase::Idle);
                let window = self.shared.config.protection.idle_window;
                if !self.demand.window(window, &self.shutdown).await {
                    return false;
                }
                policy.went_idle();
                true
            }
        }
    }

    /// The worker yields: take no message; once no job runs, let protection go at once (no
    /// minimum hold: ECS is waiting); then wait unprotected until the yield ends. False if
    /// shutdown came first.
    async fn wait_out_yield(&self) -> bool {
        self.shared.health.set_for(self.slot, Phase::Yielding);
        self.demand.release(self.slot);
        let mut rx = self.yielding.subscribe();
        let running = &self.shared.running;
        loop {
            if rx.borrow_and_update().is_none() {
                return true;
            }
            if !running.any() {
                self.demand.release_now(self.slot);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return true },
                _ = running.wait_idle(), if running.any() => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    /// Messages that arrived unprotected: take protection before any of them starts, or hand
    /// them back.
    async fn cover_received(&self, messages: &[Received]) -> Covered {
        let url = &*self.queue.url;
        let protector = self.demand.protector();
        let until = Instant::now() + COVER_MARGIN;
        self.demand.hold(self.slot, until);
        let wait = tokio::time::timeout(
            self.shared.config.visibility_timeout / 2,
            protector.wait_covered(&self.shutdown, until),
        );
        let waited = tokio::select! {
            w = wait => w,
            _ = self.yielding.begun() => {
                self.shared.sqs.return_now(url, messages).await;
                return Covered::Returned;
            }
        };
        match waited {
            Ok(true) => Covered::Yes,
            Ok(false) => {
                self.shared.sqs.return_now(url, messages).await;
                Covered::Stop
            }
            Err(_) => {
                tracing::warn!(
                    queue_url = url,
                    count = messages.len(),
                    "protection could not be taken for received messages; returning them to the queue"
                );
                self.shared.sqs.return_now(url, messages).await;
                Covered::Returned
            }
        }
    }

    /// One job task per message (per message group on a FIFO queue), each holding its slot.
    fn start_jobs(&self, batch: Vec<(Received, OwnedSemaphorePermit)>) {
        let (shared, queue) = (&self.shared, &self.queue);
        shared.running.add(batch.len());
        self.demand.busy();
        if queue.info.fifo {
            // One task per message group: a group's messages run one after another, in order;
            // different groups run in parallel.
            for group in fifo_groups(batch) {
                let keys = group.iter().map(|(m, _)| queue.keeper.track(m)).collect();
                self.jobs.spawn(run_group(
                    shared.clone(),
                    queue.clone(),
                    group,
                    keys,
                    self.turn(),
                ));
            }
        } else {
            for (msg, permit) in batch {
                let key = queue.keeper.track(&msg);
                let span = job::span(&msg);
                let (shared, queue, turn) = (shared.clone(), queue.clone(), self.turn());
                self.jobs.spawn(async move {
                    run_job(shared, &queue, msg, key, &turn)
                        .instrument(span)
                        .await;
                    drop(permit)
                });
            }
        }
    }
}

/// How taking protection for received messages ended.
enum Covered {
    Yes,
    /// Shutdown: the messages went back.
    Stop,
    /// Protection could not be had in time: the messages went back.
    Returned,
}

//! The life of a job: run the handler under the shutdown deadline and the job timeout, contain a
//! panic, and settle the message by the outcome. FIFO batches run group by group, in order.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::context::{Queue, Shared};
use super::settle;
use crate::handler::{unwrap_sns, Handler, Job, Outcome};
use crate::sqs::Received;
use crate::stats::Stats;
use crate::sync::sleep_until_opt;
use crate::yielding::Yielding;

/// How long a timed-out job's handler gets to stop after its cancel token fires.
const JOB_STOP_GRACE: Duration = Duration::from_secs(5);
/// At the shutdown deadline, how long handlers get to stop: short, the exit is due.
const DEADLINE_STOP_GRACE: Duration = Duration::from_millis(500);

/// The span every line of a job is logged in.
pub(super) fn span(msg: &Received) -> tracing::Span {
    tracing::info_span!("job", message_id = %msg.message_id, receive_count = msg.receive_count)
}

/// How a received message waits for a job slot. Without prefetch it has one already; with it, a
/// message received ahead of a free slot waits, and goes back to the queue at once if the worker
/// shuts down or yields first (it never started, so nothing is cut short).
#[derive(Clone)]
pub(super) struct Turn {
    pub slots: Option<Arc<Semaphore>>,
    pub shutdown: CancellationToken,
    pub yielding: Arc<Yielding>,
}

impl Turn {
    /// `Some` (with the slot's permit when slots are counted) when the job may start; `None` when
    /// the worker shuts down or yields first.
    async fn wait(&self) -> Option<Option<OwnedSemaphorePermit>> {
        let Some(slots) = &self.slots else {
            return Some(None);
        };
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return Some(Some(p));
        }
        tokio::select! {
            p = slots.clone().acquire_owned() => p.ok().map(Some),
            _ = self.shutdown.cancelled() => None,
            _ = self.yielding.begun() => None,
        }
    }
}

/// What happened to a job, for the finishing step.
enum Ending {
    Done(Outcome),
    Cancelled,
}

/// Splits a FIFO batch by `MessageGroupId`, keeping the order of messages within each group.
pub(super) fn fifo_groups<T>(batch: Vec<(Received, T)>) -> Vec<Vec<(Received, T)>> {
    let mut keys: Vec<Option<String>> = Vec::new();
    let mut groups: Vec<Vec<(Received, T)>> = Vec::new();
    for item in batch {
        let g = item.0.group_id().map(str::to_string);
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
pub(super) async fn run_group<H: Handler>(
    shared: Arc<Shared<H>>,
    queue: Arc<Queue>,
    group: Vec<(Received, OwnedSemaphorePermit)>,
    keys: Vec<u64>,
    turn: Turn,
) {
    let mut rest = group.into_iter().zip(keys);
    while let Some(((msg, permit), key)) = rest.next() {
        let span = span(&msg);
        let ok = run_job(shared.clone(), &queue, msg, key, &turn)
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
                // Their slots are held (in `left`) until they are back in the queue.
                let (msgs, keys): (Vec<Received>, Vec<u64>) =
                    left.iter().map(|((m, _), key)| (m.clone(), *key)).unzip();
                return_unstarted(&shared, &queue, &msgs, &keys).await;
            }
            return;
        }
    }
}

/// Messages counted as running (tracked under `keys`) whose jobs never started: back to the
/// queue at once.
async fn return_unstarted<H: Handler>(
    shared: &Shared<H>,
    queue: &Queue,
    msgs: &[Received],
    keys: &[u64],
) {
    for key in keys {
        queue.keeper.untrack(*key);
    }
    shared.sqs.return_now(&queue.url, msgs).await;
    shared.running.done(msgs.len());
}

/// Runs one job (its message already tracked under `key`) and settles its message: delete,
/// retry later, dead-letter, or return. True when the job succeeded.
pub(super) async fn run_job<H: Handler>(
    shared: Arc<Shared<H>>,
    queue: &Queue,
    msg: Received,
    key: u64,
    turn: &Turn,
) -> bool {
    let Some(_slot) = turn.wait().await else {
        tracing::info!(
            "shutting down or yielding: returning a prefetched message that never started"
        );
        Box::pin(return_unstarted(
            &shared,
            queue,
            std::slice::from_ref(&msg),
            &[key],
        ))
        .await;
        return false;
    };
    Stats::add(&shared.sqs.counters().jobs_started, 1);
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
                group_id: msg.group_id().map(str::to_string),
                attributes: msg.attributes.clone(),
                message_attributes,
                queue_url: queue.url.clone(),
                queue_name: queue.name.clone(),
                cancel: job_token.clone(),
            };
            let work = AssertUnwindSafe(shared.handler.handle(job)).catch_unwind();
            tokio::pin!(work);
            let panicked = |panic: Box<dyn std::any::Any + Send>| {
                Stats::add(&shared.sqs.counters().jobs_panicked, 1);
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
                _ = sleep_until_opt(shared.config.job_timeout.map(|t| started + t)) => {
                    job_token.cancel();
                    // Let the handler stop its work (an exec child gets SIGTERM) before dropping it.
                    let _ = tokio::time::timeout(JOB_STOP_GRACE, &mut work).await;
                    Stats::add(&shared.sqs.counters().jobs_timed_out, 1);
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
    let stats = shared.sqs.counters();
    let queue_url = &queue.url;
    let succeeded = matches!(ending, Ending::Done(Outcome::Success));
    match ending {
        Ending::Done(Outcome::Success) => {
            Stats::add(&stats.jobs_succeeded, 1);
            tracing::info!(elapsed_ms, "done");
            settle::delete(queue, &msg, "the message will be delivered again");
        }
        // The failure paths await SDK calls, whose futures are several kilobytes: boxed, they
        // stay out of every job's future, which tokio would otherwise copy at each spawn.
        Ending::Done(Outcome::Retry { reason, delay }) => {
            Stats::add(&stats.jobs_failed, 1);
            Box::pin(settle::failure(
                &shared, queue, &msg, &reason, delay, false, elapsed_ms,
            ))
            .await;
        }
        Ending::Done(Outcome::Permanent { reason }) => {
            Stats::add(&stats.jobs_failed, 1);
            Box::pin(settle::failure(
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
    shared.running.done(1);
    succeeded
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

//! Settling a finished job's message: delete it, make it visible again after a backoff, or move
//! it to the dead-letter queue.

use std::time::Duration;

use super::context::{Queue, Shared};
use crate::handler::Handler;
use crate::sqs::deleter::PendingDelete;
use crate::sqs::{Received, SqsError};
use crate::stats::Stats;

/// Hands a message to the queue's deleter; `otherwise` says what happens when it cannot.
pub(super) fn delete(queue: &Queue, msg: &Received, otherwise: &str) {
    let p = PendingDelete {
        message_id: msg.message_id.clone(),
        receipt_handle: msg.receipt_handle.clone(),
    };
    if queue.deletes.send(p).is_err() {
        tracing::error!("deleter already stopped; {otherwise}");
    }
}

/// A failed job: dead-letter it ourselves when that is our job, otherwise make it visible again
/// after a backoff so the queue's redrive policy can count it.
pub(super) async fn failure<H: Handler>(
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
                    Stats::add(&shared.sqs.counters().jobs_dead_lettered, 1);
                    tracing::warn!(
                        elapsed_ms,
                        reason,
                        "failed for good; copied to the dead-letter queue and deleted"
                    );
                    delete(
                        queue,
                        msg,
                        "the message will be delivered again (and is already in the DLQ)",
                    );
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

//! Batches deletes into `DeleteMessageBatch` requests of up to 10 entries, several in flight at
//! once, and retries the entries SQS failed on its own side.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Sqs;
use crate::backoff::Backoff;
use crate::limits::SQS_MAX_BATCH_ENTRIES;
use crate::stats::Stats;

/// A message waiting to be deleted.
#[derive(Debug)]
pub(crate) struct PendingDelete {
    pub message_id: String,
    pub receipt_handle: String,
}

/// Batches deletes into `DeleteMessageBatch` requests of up to 10 entries, waiting at most
/// `linger` for a batch to fill. Failed entries that SQS blames on itself are retried.
pub(crate) struct Deleter {
    tx: mpsc::UnboundedSender<PendingDelete>,
    task: tokio::task::JoinHandle<()>,
}

/// The fewest delete batches allowed in flight at once.
const MIN_DELETES_IN_FLIGHT: usize = 4;
/// Delete batches in flight per 10 job slots: far from SQS, each batch takes a round trip, and
/// the deletes of a busy worker must not queue behind each other.
const DELETES_IN_FLIGHT_PER_BATCH_OF_SLOTS: usize = 2;
const DELETE_ATTEMPTS: u32 = 5;

impl Deleter {
    /// A deleter for a worker of `concurrency` job slots.
    pub(crate) fn start(sqs: Sqs, queue_url: String, linger: Duration, concurrency: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = (DELETES_IN_FLIGHT_PER_BATCH_OF_SLOTS
            * concurrency.div_ceil(SQS_MAX_BATCH_ENTRIES))
        .max(MIN_DELETES_IN_FLIGHT);
        let task = tokio::spawn(run_deleter(sqs, queue_url, linger, in_flight, rx));
        Self { tx, task }
    }

    /// A cheap handle for jobs to queue deletes through.
    pub(crate) fn sender(&self) -> mpsc::UnboundedSender<PendingDelete> {
        self.tx.clone()
    }

    /// Sends everything queued, then stops. Every sender must be dropped for this to finish.
    pub(crate) async fn flush(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "deleter task failed");
        }
    }
}

async fn run_deleter(
    sqs: Sqs,
    queue_url: String,
    linger: Duration,
    most_in_flight: usize,
    mut rx: mpsc::UnboundedReceiver<PendingDelete>,
) {
    let queue_url: Arc<str> = queue_url.into();
    let mut in_flight = JoinSet::new();
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        let until = Instant::now() + linger;
        while batch.len() < SQS_MAX_BATCH_ENTRIES {
            // Take what is already queued without waiting; linger only when the batch is short.
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                },
            }
        }
        while in_flight.len() >= most_in_flight {
            in_flight.join_next().await;
        }
        in_flight.spawn(delete_with_retries(sqs.clone(), queue_url.clone(), batch));
    }
    while in_flight.join_next().await.is_some() {}
}

async fn delete_with_retries(sqs: Sqs, queue_url: Arc<str>, mut batch: Vec<PendingDelete>) {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    for attempt in 0..DELETE_ATTEMPTS {
        let receipts: Vec<String> = batch.iter().map(|p| p.receipt_handle.clone()).collect();
        match sqs.delete_batch(&queue_url, &receipts).await {
            Ok(failed) => {
                let mut retry = Vec::new();
                let mut failed_idx: Vec<usize> = Vec::new();
                for f in failed {
                    failed_idx.push(f.index);
                    Stats::add(&sqs.counters().delete_errors, 1);
                    if f.sender_fault {
                        if let Some(p) = batch.get(f.index) {
                            tracing::warn!(message_id = %p.message_id, code = f.code, "delete refused; the message will be delivered again (its job already succeeded)");
                        }
                    } else {
                        retry.push(f.index);
                    }
                }
                let ok = batch.len() - failed_idx.len();
                Stats::add(&sqs.counters().messages_deleted, ok as u64);
                if retry.is_empty() {
                    return;
                }
                let mut i = 0;
                batch.retain(|_| {
                    let keep = retry.contains(&i);
                    i += 1;
                    keep
                });
            }
            Err(e) => {
                Stats::add(&sqs.counters().delete_errors, 1);
                tracing::warn!(error = %e, count = batch.len(), attempt, "delete batch failed; retrying");
            }
        }
        // No sleep after the last attempt: it would only hold up the shutdown flush.
        if attempt + 1 < DELETE_ATTEMPTS {
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
    }
    for p in batch {
        tracing::error!(message_id = %p.message_id, "could not delete after {DELETE_ATTEMPTS} attempts; the message will be delivered again");
    }
}

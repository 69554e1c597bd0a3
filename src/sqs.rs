//! SQS calls the worker makes, each counted: receive, the batching [`Deleter`], the
//! [`VisibilityKeeper`] that extends running jobs' messages, and single visibility changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::limits::{SQS_MAX_BATCH_ENTRIES, SQS_MAX_VISIBILITY, SQS_VISIBILITY_MARGIN};
use crate::sqs_wire::SqsWire;
use crate::stats::Stats;

/// An SQS call that failed, with the service's error code when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed: {code}: {detail}")]
pub struct SqsError {
    pub op: &'static str,
    pub code: String,
    pub detail: String,
}

impl SqsError {
    pub fn new(op: &'static str, code: &str, detail: impl ToString) -> Self {
        Self {
            op,
            code: code.into(),
            detail: detail.to_string(),
        }
    }

    fn from_sdk<E, R>(op: &'static str, e: aws_sdk_sqs::error::SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = e.code().unwrap_or("no-code").to_string();
        Self {
            op,
            code,
            detail: DisplayErrorContext(&e).to_string(),
        }
    }

    /// Errors that retrying will not fix: wrong queue, missing permission.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.code.as_str(),
            "AWS.SimpleQueueService.NonExistentQueue"
                | "QueueDoesNotExist"
                | "AccessDenied"
                | "AccessDeniedException"
                | "InvalidAddress"
                | "InvalidSecurity"
        )
    }
}

/// SQS counts visibility in whole seconds: round up, so a 700 ms backoff is 1 s, not 0.
pub fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A received message with what the worker needs of it.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub receive_count: u32,
    pub attributes: HashMap<String, String>,
    pub message_attributes: HashMap<String, String>,
    /// Raw message attributes, kept for copying to a dead-letter queue.
    pub raw_message_attributes: HashMap<String, MessageAttributeValue>,
    pub received_at: Instant,
}

impl Received {
    /// `None` without a receipt handle: such a message can be neither deleted nor returned.
    pub fn new(
        message_id: Option<String>,
        receipt_handle: Option<String>,
        body: Option<String>,
        attributes: HashMap<String, String>,
        raw_message_attributes: HashMap<String, MessageAttributeValue>,
        received_at: Instant,
    ) -> Option<Self> {
        let receive_count = attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let message_attributes = raw_message_attributes
            .iter()
            .filter_map(|(k, v)| v.string_value().map(|s| (k.clone(), s.to_string())))
            .collect();
        Some(Self {
            message_id: message_id.unwrap_or_default(),
            receipt_handle: receipt_handle?,
            body: body.unwrap_or_default(),
            receive_count,
            attributes,
            message_attributes,
            raw_message_attributes,
            received_at,
        })
    }
}

/// The system attributes every receive asks for.
pub const SYSTEM_ATTRIBUTES: [&str; 4] = [
    "ApproximateReceiveCount",
    "SentTimestamp",
    "ApproximateFirstReceiveTimestamp",
    "MessageGroupId",
];

/// What the worker learns about its queue at start.
#[derive(Debug, Clone, Default)]
pub struct QueueInfo {
    pub has_redrive: bool,
    pub fifo: bool,
}

/// The counted SQS client.
#[derive(Clone)]
pub struct Sqs {
    pub client: aws_sdk_sqs::Client,
    /// When set, receives and batch deletes go through it instead of the SDK (see `sqs_wire`).
    pub wire: Option<Arc<SqsWire>>,
    pub stats: Arc<Stats>,
}

impl Sqs {
    pub fn new(client: aws_sdk_sqs::Client, stats: Arc<Stats>) -> Self {
        Self {
            client,
            wire: None,
            stats,
        }
    }

    /// Sends receives and batch deletes through `wire`.
    pub fn with_wire(mut self, wire: SqsWire) -> Self {
        self.wire = Some(Arc::new(wire));
        self
    }

    /// Checks that the queue exists and reads whether it has a redrive policy.
    pub async fn inspect(&self, queue_url: &str) -> Result<QueueInfo, SqsError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .attribute_names(QueueAttributeName::FifoQueue)
            .send()
            .await
            .map_err(|e| SqsError::from_sdk("GetQueueAttributes", e))?;
        let attrs = out.attributes.unwrap_or_default();
        Ok(QueueInfo {
            has_redrive: attrs
                .get(&QueueAttributeName::RedrivePolicy)
                .is_some_and(|s| !s.is_empty()),
            fifo: attrs
                .get(&QueueAttributeName::FifoQueue)
                .is_some_and(|s| s == "true"),
        })
    }

    pub async fn receive(
        &self,
        queue_url: &str,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, SqsError> {
        Stats::add(&self.stats.receive_requests, 1);
        let messages = match &self.wire {
            Some(w) => w.receive(queue_url, max, wait, visibility).await,
            None => self.receive_sdk(queue_url, max, wait, visibility).await,
        }
        .inspect_err(|_| Stats::add(&self.stats.receive_errors, 1))?;
        if messages.is_empty() {
            Stats::add(&self.stats.empty_receives, 1);
        }
        Stats::add(&self.stats.messages_received, messages.len() as u64);
        Ok(messages)
    }

    async fn receive_sdk(
        &self,
        queue_url: &str,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, SqsError> {
        let out = self
            .client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max as i32)
            .wait_time_seconds(wait.as_secs() as i32)
            .visibility_timeout(visibility.as_secs() as i32)
            .set_message_system_attribute_names(Some(
                SYSTEM_ATTRIBUTES
                    .iter()
                    .map(|a| MessageSystemAttributeName::from(*a))
                    .collect(),
            ))
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| SqsError::from_sdk("ReceiveMessage", e))?;
        let now = Instant::now();
        let messages = out.messages.unwrap_or_default();
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let attributes = m
                    .attributes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k.as_str().to_string(), v))
                    .collect();
                Received::new(
                    m.message_id,
                    m.receipt_handle,
                    m.body,
                    attributes,
                    m.message_attributes.unwrap_or_default(),
                    now,
                )
            })
            .collect())
    }

    /// Sets the visibility of one message (a failed job's backoff).
    pub async fn set_visibility(
        &self,
        queue_url: &str,
        receipt: &str,
        visibility: Duration,
    ) -> Result<(), SqsError> {
        Stats::add(&self.stats.visibility_requests, 1);
        self.client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(
                whole_seconds_up(visibility).min(SQS_MAX_VISIBILITY.as_secs()) as i32,
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                Stats::add(&self.stats.visibility_errors, 1);
                SqsError::from_sdk("ChangeMessageVisibility", e)
            })
    }

    /// Changes the visibility of up to 10 messages; returns the indexes of entries that failed,
    /// with their error codes.
    pub async fn set_visibility_batch(
        &self,
        queue_url: &str,
        entries: &[(&str, Duration)],
    ) -> Result<Vec<(usize, String)>, SqsError> {
        Stats::add(&self.stats.visibility_requests, 1);
        let mut req = self
            .client
            .change_message_visibility_batch()
            .queue_url(queue_url);
        for (i, (receipt, vis)) in entries.iter().enumerate() {
            let entry = ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(*receipt)
                .visibility_timeout(vis.as_secs() as i32)
                .build()
                .map_err(|e| SqsError::new("ChangeMessageVisibilityBatch", "build", e))?;
            req = req.entries(entry);
        }
        let out = req.send().await.map_err(|e| {
            Stats::add(&self.stats.visibility_errors, 1);
            SqsError::from_sdk("ChangeMessageVisibilityBatch", e)
        })?;
        let failed: Vec<(usize, String)> = out
            .failed
            .iter()
            .filter_map(|f| Some((f.id.parse().ok()?, f.code.clone())))
            .collect();
        Stats::add(&self.stats.visibility_errors, failed.len() as u64);
        Ok(failed)
    }

    /// Makes messages receivable again at once, in batches of 10. Errors are logged: the
    /// messages then come back when their visibility timeout ends.
    pub async fn return_now(&self, queue_url: &str, messages: &[Received]) {
        for chunk in messages.chunks(SQS_MAX_BATCH_ENTRIES) {
            let entries: Vec<(&str, Duration)> = chunk
                .iter()
                .map(|m| (m.receipt_handle.as_str(), Duration::ZERO))
                .collect();
            match self.set_visibility_batch(queue_url, &entries).await {
                Ok(failed) => {
                    // Only the entries SQS applied were returned; the failed ones wait out their
                    // visibility timeout.
                    let returned = chunk.len().saturating_sub(failed.len());
                    for (i, code) in failed {
                        if let Some(m) = chunk.get(i) {
                            tracing::warn!(message_id = %m.message_id, code, "could not return message; it comes back when its visibility timeout ends");
                        }
                    }
                    Stats::add(&self.stats.messages_returned, returned as u64);
                }
                Err(e) => {
                    tracing::warn!(error = %e, count = chunk.len(), "could not return messages; they come back when their visibility timeout ends")
                }
            }
        }
    }

    /// Copies a message (body and attributes, plus `why` as extra string attributes while SQS's
    /// limit of 10 leaves room) to a dead-letter queue.
    pub async fn send_dead_letter(
        &self,
        dlq_url: &str,
        msg: &Received,
        why: &[(&str, String)],
    ) -> Result<(), SqsError> {
        Stats::add(&self.stats.dead_letter_requests, 1);
        let mut attrs = msg.raw_message_attributes.clone();
        for (k, v) in why {
            if attrs.len() >= 10 {
                break;
            }
            if let Ok(a) = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
            {
                attrs.insert((*k).to_string(), a);
            }
        }
        let mut req = self
            .client
            .send_message()
            .queue_url(dlq_url)
            .message_body(&msg.body)
            .set_message_attributes(Some(attrs));
        if dlq_url.ends_with(".fifo") {
            let group = msg
                .attributes
                .get("MessageGroupId")
                .cloned()
                .unwrap_or_else(|| "dead-letter".into());
            req = req
                .message_group_id(group)
                .message_deduplication_id(&msg.message_id);
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| SqsError::from_sdk("SendMessage", e))
    }

    /// Deletes up to 10 messages; returns the failed entries (index, code, sender_fault).
    async fn delete_batch(
        &self,
        queue_url: &str,
        receipts: &[String],
    ) -> Result<Vec<(usize, String, bool)>, SqsError> {
        Stats::add(&self.stats.delete_requests, 1);
        if let Some(w) = &self.wire {
            return w.delete_batch(queue_url, receipts).await;
        }
        let mut req = self.client.delete_message_batch().queue_url(queue_url);
        for (i, r) in receipts.iter().enumerate() {
            let entry = DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(r)
                .build()
                .map_err(|e| SqsError::new("DeleteMessageBatch", "build", e))?;
            req = req.entries(entry);
        }
        let out = req
            .send()
            .await
            .map_err(|e| SqsError::from_sdk("DeleteMessageBatch", e))?;
        Ok(out
            .failed
            .iter()
            .filter_map(|f| Some((f.id.parse().ok()?, f.code.clone(), f.sender_fault)))
            .collect())
    }
}

/// A message waiting to be deleted.
#[derive(Debug)]
pub struct PendingDelete {
    pub message_id: String,
    pub receipt_handle: String,
}

/// Batches deletes into `DeleteMessageBatch` requests of up to 10 entries, waiting at most
/// `linger` for a batch to fill. Failed entries that SQS blames on itself are retried.
pub struct Deleter {
    tx: mpsc::UnboundedSender<PendingDelete>,
    task: tokio::task::JoinHandle<()>,
}

/// How many delete batches may be in flight at once: enough to keep up with a fast queue.
const DELETE_PARALLELISM: usize = 4;
const DELETE_ATTEMPTS: u32 = 5;

impl Deleter {
    pub fn start(sqs: Sqs, queue_url: String, linger: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_deleter(sqs, queue_url, linger, rx));
        Self { tx, task }
    }

    /// A cheap handle for jobs to queue deletes through.
    pub fn sender(&self) -> mpsc::UnboundedSender<PendingDelete> {
        self.tx.clone()
    }

    /// Sends everything queued, then stops. Every sender must be dropped for this to finish.
    pub async fn flush(self) {
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
        while in_flight.len() >= DELETE_PARALLELISM {
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
                for (i, code, sender_fault) in failed {
                    failed_idx.push(i);
                    Stats::add(&sqs.stats.delete_errors, 1);
                    if sender_fault {
                        if let Some(p) = batch.get(i) {
                            tracing::warn!(message_id = %p.message_id, code, "delete refused; the message will be delivered again (its job already succeeded)");
                        }
                    } else {
                        retry.push(i);
                    }
                }
                let ok = batch.len() - failed_idx.len();
                Stats::add(&sqs.stats.messages_deleted, ok as u64);
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
                Stats::add(&sqs.stats.delete_errors, 1);
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

#[derive(Debug)]
struct Tracked {
    message_id: String,
    receipt_handle: String,
    received_at: Instant,
    visible_until: Instant,
    /// Extension no longer possible (12-hour cap reached, or SQS refused the handle).
    stuck: bool,
}

/// Keeps running jobs' messages invisible: extends each before its visibility ends, coalescing
/// the extensions that fall due together into `ChangeMessageVisibilityBatch` requests.
#[derive(Clone)]
pub struct VisibilityKeeper {
    entries: Arc<Mutex<HashMap<u64, Tracked>>>,
    next_key: Arc<std::sync::atomic::AtomicU64>,
    visibility: Duration,
}

impl VisibilityKeeper {
    pub fn new(visibility: Duration) -> Self {
        Self {
            entries: Arc::default(),
            next_key: Arc::default(),
            visibility,
        }
    }

    /// Starts tracking a message; returns the key to [`VisibilityKeeper::untrack`] it with.
    pub fn track(&self, m: &Received) -> u64 {
        let key = self
            .next_key
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = Tracked {
            message_id: m.message_id.clone(),
            receipt_handle: m.receipt_handle.clone(),
            received_at: m.received_at,
            visible_until: m.received_at + self.visibility,
            stuck: false,
        };
        self.lock().insert(key, t);
        key
    }

    pub fn untrack(&self, key: u64) {
        self.lock().remove(&key);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still safe to use.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How often the keeper looks: often enough to extend with a third of the timeout left.
    pub fn tick(&self) -> Duration {
        (self.visibility / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Runs until `stop` fires.
    pub async fn run(self, sqs: Sqs, queue_url: String, stop: CancellationToken) {
        let mut interval = tokio::time::interval(self.tick());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => self.extend_due(&sqs, &queue_url).await,
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One pass: extends every message within a third of its timeout of becoming visible, plus
    /// those within half of it (so extensions travel together).
    pub async fn extend_due(&self, sqs: &Sqs, queue_url: &str) {
        let now = Instant::now();
        let due_within = self.visibility / 3;
        let coalesce_within = self.visibility / 2;
        let cap = SQS_MAX_VISIBILITY - SQS_VISIBILITY_MARGIN;
        let batch: Vec<(u64, String, Duration)> = {
            let mut map = self.lock();
            if !map
                .values()
                .any(|t| !t.stuck && t.visible_until.saturating_duration_since(now) <= due_within)
            {
                return;
            }
            let mut out = Vec::new();
            for (k, t) in map.iter_mut() {
                if t.stuck || t.visible_until.saturating_duration_since(now) > coalesce_within {
                    continue;
                }
                // Never ask for visibility past 12 hours after the receive: SQS rejects it.
                let left = cap.saturating_sub(now.saturating_duration_since(t.received_at));
                let ext = self.visibility.min(left);
                if ext <= t.visible_until.saturating_duration_since(now) {
                    t.stuck = true;
                    tracing::warn!(message_id = %t.message_id, "job is reaching SQS's 12-hour visibility limit; the message will become visible again while it runs");
                    continue;
                }
                out.push((
                    *k,
                    t.receipt_handle.clone(),
                    Duration::from_secs(ext.as_secs()),
                ));
            }
            out
        };
        for chunk in batch.chunks(SQS_MAX_BATCH_ENTRIES) {
            let entries: Vec<(&str, Duration)> =
                chunk.iter().map(|(_, r, d)| (r.as_str(), *d)).collect();
            match sqs.set_visibility_batch(queue_url, &entries).await {
                Ok(failed) => {
                    let mut map = self.lock();
                    for (i, (key, _, ext)) in chunk.iter().enumerate() {
                        let Some(t) = map.get_mut(key) else { continue };
                        if let Some((_, code)) = failed.iter().find(|(f, _)| *f == i) {
                            // A refused handle will not start working again: stop trying.
                            if code.contains("ReceiptHandleIsInvalid")
                                || code.contains("MessageNotInflight")
                            {
                                t.stuck = true;
                            }
                            tracing::warn!(message_id = %t.message_id, code, "could not extend visibility; another worker may receive this message while its job runs");
                        } else {
                            t.visible_until = now + *ext;
                            Stats::add(&sqs.stats.visibility_extensions, 1);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, count = chunk.len(), "visibility extension failed; retrying on the next tick")
                }
            }
        }
    }
}

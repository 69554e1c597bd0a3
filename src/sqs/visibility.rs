//! Keeps running jobs' messages invisible: extends each before its visibility ends, coalescing
//! the extensions that fall due together into `ChangeMessageVisibilityBatch` requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Received, Sqs};
use crate::limits::{SQS_MAX_BATCH_ENTRIES, SQS_MAX_VISIBILITY, SQS_VISIBILITY_MARGIN};
use crate::stats::Stats;
use crate::sync::lock;

/// `ChangeMessageVisibilityBatch` requests sent at once by one pass.
const BATCHES_IN_FLIGHT: usize = 8;

/// Batch entry codes after which a receipt handle will never be extended again.
const HOPELESS_CODES: [&str; 2] = ["ReceiptHandleIsInvalid", "MessageNotInflight"];

#[derive(Debug)]
struct Tracked {
    message_id: String,
    receipt_handle: String,
    received_at: Instant,
    visible_until: Instant,
    /// Extension no longer possible (12-hour cap reached, or SQS refused the handle).
    stuck: bool,
}

/// The keeper of one queue (cheap to clone: the clones share their entries).
#[derive(Clone)]
pub(crate) struct VisibilityKeeper {
    entries: Arc<Mutex<HashMap<u64, Tracked>>>,
    next_key: Arc<std::sync::atomic::AtomicU64>,
    visibility: Duration,
}

impl VisibilityKeeper {
    pub(crate) fn new(visibility: Duration) -> Self {
        Self {
            entries: Arc::default(),
            next_key: Arc::default(),
            visibility,
        }
    }

    /// Starts tracking a message; returns the key to [`VisibilityKeeper::untrack`] it with.
    pub(crate) fn track(&self, m: &Received) -> u64 {
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

    pub(crate) fn untrack(&self, key: u64) {
        self.lock().remove(&key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        // Single inserts and removes cannot leave the map half-updated.
        lock(&self.entries)
    }

    /// How often the keeper looks: often enough to extend with a third of the timeout left.
    pub(crate) fn tick(&self) -> Duration {
        (self.visibility / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Runs until `stop` fires.
    pub(crate) async fn run(self, sqs: Sqs, queue_url: String, stop: CancellationToken) {
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
    pub(crate) async fn extend_due(&self, sqs: &Sqs, queue_url: &str) {
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
        // The batches go out together (a bounded number at once), not one after another: far
        // from SQS, extensions due at once must not wait a round trip each.
        let mut chunks = batch.chunks(SQS_MAX_BATCH_ENTRIES);
        let mut sending = FuturesUnordered::new();
        let mut answers = Vec::new();
        loop {
            while sending.len() < BATCHES_IN_FLIGHT {
                let Some(chunk) = chunks.next() else { break };
                sending.push(extend(sqs, queue_url, chunk));
            }
            match sending.next().await {
                Some(answer) => answers.push(answer),
                None => break,
            }
        }
        for (chunk, answer) in answers {
            match answer {
                Ok(failed) => {
                    let mut map = self.lock();
                    for (i, (key, _, ext)) in chunk.iter().enumerate() {
                        let Some(t) = map.get_mut(key) else { continue };
                        if let Some(f) = failed.iter().find(|f| f.index == i) {
                            // A refused handle will not start working again: stop trying.
                            if HOPELESS_CODES.iter().any(|c| f.code.contains(c)) {
                                t.stuck = true;
                            }
                            tracing::warn!(message_id = %t.message_id, code = f.code, "could not extend visibility; another worker may receive this message while its job runs");
                        } else {
                            t.visible_until = now + *ext;
                            Stats::add(&sqs.counters().visibility_extensions, 1);
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

/// One `ChangeMessageVisibilityBatch` of `chunk` (key, receipt handle, new visibility).
async fn extend<'a>(
    sqs: &Sqs,
    queue_url: &str,
    chunk: &'a [(u64, String, Duration)],
) -> (
    &'a [(u64, String, Duration)],
    Result<Vec<crate::sqs::FailedEntry>, crate::sqs::SqsError>,
) {
    let entries: Vec<(&str, Duration)> = chunk.iter().map(|(_, r, d)| (r.as_str(), *d)).collect();
    (chunk, sqs.set_visibility_batch(queue_url, &entries).await)
}

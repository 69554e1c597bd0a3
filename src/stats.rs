//! Counters the worker keeps about itself: read by tests, the benchmark and the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        /// Live counters, shared by every part of the worker.
        #[derive(Debug, Default)]
        pub struct Stats { $(#[doc = $doc] pub $name: AtomicU64,)* }

        /// A copy of [`Stats`] at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        pub struct Snapshot { $(#[doc = $doc] pub $name: u64,)* }

        impl Stats {
            /// Every counter, read now.
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    receive_requests: "ReceiveMessage requests sent",
    receive_errors: "ReceiveMessage requests that failed",
    empty_receives: "ReceiveMessage requests that returned no message",
    messages_received: "messages received",
    messages_returned: "messages handed back unstarted (visibility 0), e.g. after shutdown",
    delete_requests: "DeleteMessageBatch requests sent",
    delete_errors: "delete entries or requests that failed",
    messages_deleted: "messages deleted",
    visibility_requests: "ChangeMessageVisibility(Batch) requests sent",
    visibility_errors: "visibility entries or requests that failed",
    visibility_extensions: "visibility extensions of running jobs",
    dead_letter_requests: "SendMessage requests to the dead-letter queue",
    jobs_started: "jobs started",
    jobs_succeeded: "jobs that succeeded",
    jobs_failed: "jobs that failed (retry or permanent), panics included",
    jobs_panicked: "jobs whose handler panicked",
    jobs_cancelled: "jobs cancelled at the shutdown deadline",
    jobs_timed_out: "jobs cancelled by --job-timeout (also counted as failed)",
    jobs_dead_lettered: "messages the worker moved to the dead-letter queue",
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Snapshot {
    /// All SQS requests the worker sent.
    pub fn sqs_requests(&self) -> u64 {
        self.receive_requests
            + self.delete_requests
            + self.visibility_requests
            + self.dead_letter_requests
    }
}

/// Upper bounds (seconds) of the job-duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// Job durations as a Prometheus-style cumulative histogram.
#[derive(Debug, Default)]
pub struct JobDurations {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl JobDurations {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// (upper bound, count) per bucket, the last one `f64::MAX` (+Inf), and the sum in seconds.
    pub fn read(&self) -> (Vec<(f64, u64)>, f64) {
        let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
            .collect();
        let counted: u64 = buckets.iter().map(|b| b.1).sum();
        let total = self.count.load(Ordering::Relaxed);
        buckets.push((f64::MAX, total.saturating_sub(counted)));
        (
            buckets,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

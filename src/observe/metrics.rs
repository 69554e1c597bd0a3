//! `/metrics`: the worker's own atomic counters, read at scrape time and written in the
//! OpenMetrics text format by prometheus-client (nothing extra per job).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::time::Instant;

use super::health::Health;
use super::Render;
use crate::protection::{CallCounts, Status};
use crate::stats::{JobDurations, Stats};
use crate::worker::RunningJobs;
use crate::yielding::Yielding;

/// What `/metrics` reads.
pub(crate) struct Live {
    pub stats: Arc<Stats>,
    pub running: Arc<RunningJobs>,
    pub durations: Arc<JobDurations>,
    pub protection: tokio::sync::watch::Receiver<Status>,
    pub calls: Arc<CallCounts>,
    pub health: Arc<Health>,
    pub yielding: Arc<Yielding>,
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
            self.running.count() as i64,
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
            "yielding",
            "1 while the task gives way to ECS (takes no new messages; lets protection go).",
            i64::from(self.yielding.current().is_some()),
        )?;
        let started: Vec<(&str, u64)> = self
            .yielding
            .started()
            .into_iter()
            .map(|(r, n)| (r.as_str(), n))
            .collect();
        counter_family(
            &mut enc,
            "yields",
            "Times the task started yielding to ECS, by reason.",
            "reason",
            &started,
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

/// The `/metrics` body, rendered on each scrape.
pub(crate) fn renderer(live: Live) -> Render {
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

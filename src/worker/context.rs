//! What the worker's parts share: the settings, clients and handler ([`Shared`]), and each
//! consumed queue with its helpers ([`Queue`]).

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::RunningJobs;
use crate::config::Config;
use crate::observe::health::Health;
use crate::sqs::deleter::PendingDelete;
use crate::sqs::visibility::VisibilityKeeper;
use crate::sqs::{QueueInfo, Sqs};
use crate::stats::JobDurations;

/// Everything a job task needs, shared by every queue.
pub(super) struct Shared<H> {
    pub config: Config,
    pub sqs: Sqs,
    pub handler: Arc<H>,
    /// Fires at the shutdown deadline: running jobs are cancelled.
    pub deadline: CancellationToken,
    /// Jobs running in the whole worker.
    pub running: Arc<RunningJobs>,
    pub health: Arc<Health>,
    pub durations: Arc<JobDurations>,
    /// With prefetch: the job slots a received message waits for (receives take slots of a
    /// larger budget, the concurrency plus the prefetch). `None`: every received message has its
    /// slot already.
    pub run_slots: Option<Arc<Semaphore>>,
}

/// One consumed queue and its helpers.
pub(super) struct Queue {
    pub url: Arc<str>,
    /// The last segment of the URL.
    pub name: Arc<str>,
    pub info: QueueInfo,
    pub keeper: VisibilityKeeper,
    pub deletes: mpsc::UnboundedSender<PendingDelete>,
}

impl Queue {
    pub(super) fn new(
        url: &str,
        info: QueueInfo,
        keeper: VisibilityKeeper,
        deletes: mpsc::UnboundedSender<PendingDelete>,
    ) -> Self {
        let name = url.rsplit('/').next().unwrap_or(url);
        Self {
            url: url.into(),
            name: name.into(),
            info,
            keeper,
            deletes,
        }
    }
}

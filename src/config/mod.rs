//! The validated settings of a worker ([`Config`]), and the command line and environment they
//! come from ([`args`]): parsed once, so runtime code never reads the environment.

pub(crate) mod args;
pub(crate) mod parse;

use std::time::Duration;

use crate::backoff::Backoff;

/// A setting that is missing or malformed: one line naming the flag and its env var.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid setting {flag} / {env}: {problem}")]
pub struct ConfigError {
    /// The flag, e.g. `--wait-time`.
    pub flag: String,
    /// The env var, e.g. `WORKER_WAIT_TIME`.
    pub env: String,
    /// What is wrong, and what would be right.
    pub problem: String,
}

/// How the worker keeps ECS from stopping it mid-job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtectionBackendKind {
    /// The ECS agent's task-protection endpoint (`$ECS_AGENT_URI/task-protection/v1/state`).
    Agent {
        /// `ECS_AGENT_URI`.
        agent_uri: String,
    },
    /// The ECS API `UpdateTaskProtection`, with cluster and task ARN read from task metadata v4.
    EcsApi {
        /// `ECS_CONTAINER_METADATA_URI_V4`.
        metadata_uri: String,
    },
    /// No protection (outside ECS, or `--protection off`).
    Off {
        /// Why, for the one log line that says so.
        reason: &'static str,
    },
}

/// When protection is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtectMode {
    /// Hold protection before every receive while work flows; when idle, release and poll
    /// unprotected until messages arrive.
    BeforeReceive,
    /// Long-poll unprotected while idle; take protection as soon as messages arrive.
    OnReceipt,
}

/// Task scale-in protection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectionConfig {
    /// How protection is set.
    pub backend: ProtectionBackendKind,
    /// When it is taken.
    pub mode: ProtectMode,
    /// How long each enabling call protects the task for (whole minutes, 1..=2880).
    pub duration: Duration,
    /// Protection is never released sooner than this after it was taken.
    pub min_hold: Duration,
    /// Unprotected pause after an idle release, so that ECS can stop an idle task.
    pub idle_window: Duration,
}

/// Where the worker reads what ECS wants of its task (deployments, scale-ins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsViewConfig {
    /// `ECS_CONTAINER_METADATA_URI_V4`: who this task is.
    pub metadata_uri: String,
    /// How often `DescribeServices` is asked (longer for large fleets).
    pub poll: Duration,
}

/// When the worker yields to ECS: takes no new messages, finishes its jobs, lets protection go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct YieldConfig {
    /// Watch the task's service through the ECS API (`None`: off).
    pub ecs_view: Option<EcsViewConfig>,
    /// After holding protection this long without a break, yield for one idle window.
    pub max_protected: Option<Duration>,
}

/// Where a message goes when it has failed `max_receives` times and the queue has no redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterConfig {
    /// The dead-letter queue.
    pub queue_url: String,
    /// Receives after which a failing message is moved there.
    pub max_receives: u32,
}

/// The validated settings of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The first queue consumed.
    pub queue_url: String,
    /// More queues consumed beside `queue_url`, sharing its concurrency budget and protection.
    pub extra_queue_urls: Vec<String>,
    /// Most jobs at once, over every queue.
    pub concurrency: usize,
    /// Messages received ahead of free job slots, over every queue (0: none).
    pub prefetch: usize,
    /// Long-poll wait of each receive.
    pub wait_time: Duration,
    /// Visibility timeout asked for on receive; extended while a job runs.
    pub visibility_timeout: Duration,
    /// After shutdown is asked for, how long running jobs may go on.
    pub shutdown_timeout: Duration,
    /// Task scale-in protection.
    pub protection: ProtectionConfig,
    /// Giving way to ECS while busy.
    pub yielding: YieldConfig,
    /// Delay before a failed message is received again, by receive count.
    pub retry: Backoff,
    /// How long the deleter waits for more deletes before sending a partial batch.
    pub delete_linger: Duration,
    /// Set: the worker moves failed messages there itself (only for queues without redrive).
    pub dead_letter: Option<DeadLetterConfig>,
    /// Where `/health` and `/metrics` are served (off when `None`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// A job running longer is cancelled and counted as failed (`None`: no limit).
    pub job_timeout: Option<Duration>,
    /// How long a receive may run past the long-poll wait before `/health` says unhealthy.
    pub health_grace: Duration,
}

impl Config {
    /// The documented defaults (those of `queue-worker run`) for `queue_url`, with protection
    /// off: what library users start from.
    pub fn new(queue_url: impl Into<String>) -> Self {
        args::RunArgs::defaults().config_for(queue_url.into())
    }

    /// Every queue consumed: `queue_url` first, then `extra_queue_urls`, without repeats.
    pub fn queue_urls(&self) -> Vec<String> {
        let mut urls = vec![self.queue_url.clone()];
        for u in &self.extra_queue_urls {
            if !urls.contains(u) {
                urls.push(u.clone());
            }
        }
        urls
    }
}

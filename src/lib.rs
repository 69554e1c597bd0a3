//! queue-worker: an SQS worker for Amazon ECS that holds task scale-in protection while jobs run,
//! so that scaling in or deploying never kills a task in the middle of a job.
//!
//! The modules, one job each:
//! - `worker`: [`run`]: the pollers, the jobs, the two-phase shutdown.
//! - `handler`: the handler boundary ([`Handler`], [`Job`], [`Outcome`]) and the shipped
//!   handlers (simulated job, `--exec`, `--forward-to`).
//! - `protection`: the [`Protector`] actor and its backends (agent endpoint, ECS API).
//! - `sqs`: the counted [`Sqs`] client (SDK and direct paths), the deleter, the visibility keeper.
//! - `config`: [`Config`], and the flags and env vars it is parsed from.
//! - `observe`: `/health` and `/metrics` beside the loop.
//! - `yielding`: learning what ECS wants (a deployment, a scale-in, an operator) and giving way.
//! - `app`: the composition root of `queue-worker run`; `aws`: the AWS set-up every part shares.
//! - `task_metadata`: who this task is (task metadata v4).
//! - `cli`: the commands and their exit codes ([`cli::main`]).
//! - `telemetry`: text or JSON logs; `stats`: the worker's counters; `limits`: SQS and ECS
//!   limits; `backoff`, `sync`: small shared pieces.
//!
//! Embedding the worker: build a [`Config`], an [`Sqs`] client ([`Sqs::connect`] with
//! [`aws_config()`]), a [`Protector`], and call [`run`] with your [`Handler`] (see
//! `examples/custom-handler.rs`).

#![warn(missing_docs)]

mod app;
mod aws;
mod backoff;
pub mod cli;
mod config;
mod handler;
mod limits;
mod observe;
mod protection;
mod sqs;
mod stats;
mod sync;
mod task_metadata;
mod telemetry;
mod worker;
mod yielding;

pub use aws::{aws_config, http_client};
pub use backoff::Backoff;
pub use config::{
    Config, ConfigError, DeadLetterConfig, EcsViewConfig, ProtectMode, ProtectionBackendKind,
    ProtectionConfig, YieldConfig,
};
pub use handler::{
    handler_fn, ExecHandler, FnHandler, ForwardHandler, Handler, Job, Outcome, SimulatedJob,
    EXIT_PERMANENT,
};
pub use observe::health_probe;
pub use protection::{CallCounts, ProtectionError, Protector, Status as ProtectionStatus, Timing};
pub use sqs::{Sqs, SqsClientKind, SqsError, SqsErrorKind};
pub use stats::{Snapshot, Stats};
pub use telemetry::{init as init_logging, LogFormat};
pub use worker::{run, run_with, RunOptions, WorkerError};
pub use yielding::Lever;

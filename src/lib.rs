//! queue-worker: an SQS worker for Amazon ECS that holds task scale-in protection while jobs run,
//! so that scaling in or deploying never kills a task in the middle of a job.
//!
//! - [`worker`]: the protected long-poll loop, job tasks, and the two-phase shutdown.
//! - [`handler`]: the handler boundary ([`Handler`], [`Job`], [`Outcome`]) and the simulated job.
//! - [`exec`]: the `--exec` handler: one process per message, no shell.
//! - [`forward`]: the `--forward-to` handler: POST to a local app, sqsd-style headers.
//! - [`protection`]: the protection actor and its backends (agent endpoint, ECS API).
//! - [`sqs`]: counted SQS calls, the batching deleter and the visibility keeper.
//! - [`sqs_wire`]: receive and batch delete without the SDK's request pipeline (the hot path).
//! - [`config`]: flags and env vars parsed once into a validated [`Config`].
//! - [`observe`]: `/health` and `/metrics` beside the loop, and the `health` probe.
//! - [`send`]: the `send` command (test messages).
//! - [`ecs_cmd`]: `ecs scale` / `ecs watch`: set a service's desired count, watch it settle.
//! - [`cli`]: the command line and exit codes; `main.rs` only calls [`cli::main`].
//! - [`backoff`], [`limits`], [`stats`], [`telemetry`]: small shared pieces.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod ecs_cmd;
pub mod exec;
pub mod forward;
pub mod handler;
pub mod limits;
pub mod observe;
pub mod protection;
pub mod send;
pub mod sqs;
pub mod sqs_wire;
pub mod stats;
pub mod telemetry;
pub mod worker;

pub use config::Config;
pub use handler::{handler_fn, Handler, Job, Outcome};
pub use worker::run;

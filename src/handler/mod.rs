//! The handler boundary: what a job receives ([`Job`]) and what it answers ([`Outcome`]), and the
//! handlers that ship with the worker: the [`SimulatedJob`] (the body says how long to "work"),
//! [`ExecHandler`] (a program per message) and [`ForwardHandler`] (POST to a local app).

mod exec;
mod forward;
mod simulated;
mod sns;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use exec::{ExecHandler, EXIT_PERMANENT};
pub use forward::ForwardHandler;
pub use simulated::SimulatedJob;
pub(crate) use sns::unwrap_sns;

/// One received message, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    /// SQS's id of the message.
    pub message_id: String,
    /// The body, with an SNS notification envelope removed.
    pub body: String,
    /// `ApproximateReceiveCount`: 1 on the first delivery.
    pub receive_count: u32,
    /// The message's `MessageGroupId`: a FIFO queue's ordering group, or a fair queue's tenant on
    /// a standard queue (which brings no ordering: such messages run in parallel).
    pub group_id: Option<String>,
    /// SQS system attributes (`SentTimestamp`, `MessageGroupId`, ...).
    pub attributes: HashMap<String, String>,
    /// String and number message attributes (binary ones are left out), SNS ones included.
    pub message_attributes: HashMap<String, String>,
    /// The queue the message came from.
    pub queue_url: Arc<str>,
    /// That queue's name (the last segment of its URL).
    pub queue_name: Arc<str>,
    /// Fires at the shutdown deadline or the job timeout: finish or give up now, the message is
    /// going back.
    pub cancel: CancellationToken,
}

/// What a job ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: delete the message.
    Success,
    /// Failed, may succeed later: make the message visible again after `delay`, or after the
    /// worker's backoff for its receive count when `None`.
    Retry {
        /// Why, for the log.
        reason: String,
        /// When to try again (`None`: the worker's backoff).
        delay: Option<Duration>,
    },
    /// Will never succeed (bad body...): dead-letter it now when the worker has a dead-letter
    /// queue, otherwise retry with backoff until the queue's redrive policy moves it.
    Permanent {
        /// Why, for the log and the dead-letter queue.
        reason: String,
    },
}

impl Outcome {
    /// A retry after the worker's backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry {
            reason: reason.into(),
            delay: None,
        }
    }

    /// A failure that retrying will not fix.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Outcome::Permanent {
            reason: reason.into(),
        }
    }
}

/// A job handler. Implement it for your own work, or wrap an async fn with [`handler_fn`].
pub trait Handler: Send + Sync + 'static {
    /// Runs one job. The future may borrow the handler: it is awaited inside the job's task.
    fn handle(&self, job: Job) -> impl Future<Output = Outcome> + Send;
}

/// A handler made from an async closure (see [`handler_fn`]).
pub struct FnHandler<F>(F);

/// Turns `|job| async move { ... Outcome::Success }` into a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn handle(&self, job: Job) -> impl Future<Output = Outcome> + Send {
        (self.0)(job)
    }
}

#[cfg(test)]
impl Job {
    /// A job as the worker would hand it over, for unit tests.
    pub(crate) fn for_test(body: &str, receive_count: u32) -> Self {
        Job {
            message_id: "m".into(),
            body: body.into(),
            receive_count,
            group_id: None,
            attributes: HashMap::new(),
            message_attributes: HashMap::new(),
            queue_url: "http://127.0.0.1:1/000000000000/q".into(),
            queue_name: "q".into(),
            cancel: CancellationToken::new(),
        }
    }
}

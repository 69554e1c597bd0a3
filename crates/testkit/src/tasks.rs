//! The background tasks of a running tool (a proxy's server and connections): spawned on one
//! tracker, stopped by one token.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tracked tasks and the token that stops them. Dropping it cancels the token (a signal only,
/// no I/O in `Drop`); [`Tasks::stop`] also waits for them.
pub struct Tasks {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }
}

impl Tasks {
    /// The token every task watches.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The tracker, for tasks that spawn more tasks (one per connection).
    pub fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// Runs `task` in the background, tracked (it should watch [`Tasks::token`]).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Cancels, then waits up to `grace` for every task; `what` names them in the warning.
    pub async fn stop(&self, grace: Duration, what: &str) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("{what}: tasks did not stop within {grace:?}");
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

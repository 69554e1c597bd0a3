//! Small helpers every part shares: the one lock helper, and a sleep that may be for ever.

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

/// Locks `m`, also after a panic elsewhere poisoned it: every lock in the worker guards plain
/// flags, maps or counters that are updated in single steps, so they are never left half-changed.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sleeps until `t`; without a `t`, never wakes (a `select!` branch that is off).
pub(crate) async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

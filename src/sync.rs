//! The one lock helper of the crate.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, also after a panic elsewhere poisoned it: every lock in the worker guards plain
/// flags, maps or counters that are updated in single steps, so they are never left half-changed.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

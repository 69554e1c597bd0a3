//! Test doubles and dev tools for queue-worker. Not part of the product: the release binary
//! never compiles this crate (it is only a dev-dependency of `queue-worker`).
//!
//! - [`agent_double`]: the ECS agent's task-protection and task-metadata endpoints.
//! - [`delay_proxy`]: a TCP relay adding a fixed latency each way (network distance).
//! - [`fault_proxy`]: a fault-injecting proxy in front of an SQS-compatible server.
//! - [`killable`]: the listener both HTTP doubles serve on, whose connections a handler can drop.
//! - [`local_ecs`]: a local stand-in for one ECS service, with its ECS API and rolling
//!   deployments (library behind the `local-ecs` binary).
//! - [`fauxqs`]: starts the fauxqs SQS emulator on a free loopback port.
//! - [`cli`]: what the binaries share (waiting for a stop request).
//! - [`tasks`]: the tracked background tasks of a running proxy, and their stop.
//!
//! Binaries: `local-ecs` (the demo's and the soak's service scheduler), `agent-double` (a
//! stand-alone agent endpoint for the benchmark) and `delay-proxy` (the benchmark's network
//! distance).

pub mod agent_double;
pub mod cli;
pub mod delay_proxy;
pub mod fault_proxy;
pub mod fauxqs;
pub mod killable;
pub mod local_ecs;
pub mod tasks;

/// Locks `m`, also after a panic poisoned it: a test must be able to read the doubles' state after
/// a panicking handler, and every lock here guards maps and counters updated in single steps.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// ECS sends SIGKILL 30 s after SIGTERM unless the task definition's `stopTimeout` says otherwise.
pub const ECS_DEFAULT_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

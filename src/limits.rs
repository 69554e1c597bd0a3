//! Service limits as named constants, each with where the number comes from.

use std::time::Duration;

// ---- SQS (SQS API reference, quotas page)

/// `ReceiveMessage.MaxNumberOfMessages` is 1..=10.
pub const SQS_MAX_RECEIVE_BATCH: usize = 10;
/// `DeleteMessageBatch` / `ChangeMessageVisibilityBatch` / `SendMessageBatch` take at most 10 entries.
pub const SQS_MAX_BATCH_ENTRIES: usize = 10;
/// `ReceiveMessage.WaitTimeSeconds` is 0..=20.
pub const SQS_MAX_WAIT: Duration = Duration::from_secs(20);
/// A message's visibility can never reach past 12 hours after it was received.
pub const SQS_MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// Safety margin kept below the 12-hour limit, since our clock and SQS's differ a little.
pub const SQS_VISIBILITY_MARGIN: Duration = Duration::from_secs(60);
/// Message bodies are at most 1 MiB.
pub const SQS_MAX_BODY_BYTES: usize = 1024 * 1024;
/// A message carries at most 10 message attributes.
pub const SQS_MAX_MESSAGE_ATTRIBUTES: usize = 10;

// ---- ECS (ECS API reference; the agent's task-protection handlers)

/// `ExpiresInMinutes` accepted by the agent endpoint and by `UpdateTaskProtection`: 1..=2880.
pub const ECS_MAX_PROTECTION_MINUTES: u64 = 2880;
/// The agent's HTTP server cuts requests at 5 s; our client waits a little longer so that the
/// agent's own 504 reaches us instead of our timeout.
pub const ECS_AGENT_CLIENT_TIMEOUT: Duration = Duration::from_secs(7);
/// `DescribeServices` takes at most 10 services per call.
pub const ECS_DESCRIBE_SERVICES_MAX: usize = 10;
/// `DescribeTasks` takes at most 100 tasks per call.
pub const ECS_DESCRIBE_TASKS_MAX: usize = 100;
/// `GetTaskProtection` takes at most 10 tasks per call.
pub const ECS_GET_TASK_PROTECTION_MAX: usize = 10;
/// A service keeps at most its 100 newest events; we only ever see those.
pub const ECS_SERVICE_EVENTS_KEPT: usize = 100;

//! What the SQS paths share: a received message, the queue's settings, and typed errors.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use tokio::time::Instant;

/// The system attributes every receive asks for.
pub(crate) const SYSTEM_ATTRIBUTES: [&str; 4] = [
    "ApproximateReceiveCount",
    "SentTimestamp",
    "ApproximateFirstReceiveTimestamp",
    "MessageGroupId",
];

/// Error codes that retrying will not fix: wrong queue, missing permission.
const PERMANENT_CODES: [&str; 6] = [
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidAddress",
    "InvalidSecurity",
];

/// What kind of failure an SQS call had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqsErrorKind {
    /// SQS answered with an error code (the query-compatible code, as the SDK reports it).
    Service {
        /// e.g. `AWS.SimpleQueueService.NonExistentQueue`.
        code: String,
    },
    /// An HTTP error answer that carried no error code (a proxy's or load balancer's page).
    Http {
        /// Its HTTP status.
        status: u16,
    },
    /// No answer: connection refused or reset, DNS, TLS.
    Transport,
    /// No answer in time.
    Timeout,
    /// An answer that could not be read, or a request that could not be built.
    Protocol,
    /// No credentials could be loaded.
    Credentials,
    /// The region or endpoint settings are unusable.
    Config,
}

impl std::fmt::Display for SqsErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SqsErrorKind::Service { code } => code,
            SqsErrorKind::Http { status } => return write!(f, "HTTP {status}"),
            SqsErrorKind::Transport => "transport",
            SqsErrorKind::Timeout => "timeout",
            SqsErrorKind::Protocol => "protocol",
            SqsErrorKind::Credentials => "credentials",
            SqsErrorKind::Config => "config",
        })
    }
}

/// An SQS call that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} failed: {kind}: {detail}")]
pub struct SqsError {
    /// The operation, e.g. `ReceiveMessage`.
    pub op: &'static str,
    /// What kind of failure.
    pub kind: SqsErrorKind,
    /// What went wrong, for people.
    pub detail: String,
}

impl SqsError {
    pub(crate) fn new(op: &'static str, kind: SqsErrorKind, detail: impl ToString) -> Self {
        Self {
            op,
            kind,
            detail: detail.to_string(),
        }
    }

    /// The service's error code, when SQS answered with one.
    pub fn code(&self) -> Option<&str> {
        match &self.kind {
            SqsErrorKind::Service { code } => Some(code),
            _ => None,
        }
    }

    /// Errors that retrying will not fix: wrong queue, missing permission.
    pub fn is_permanent(&self) -> bool {
        self.code().is_some_and(|c| PERMANENT_CODES.contains(&c))
    }

    /// At start-up, everything but a service error that may pass means the queue cannot be used:
    /// a wrong endpoint or region fails the same way for ever.
    pub(crate) fn is_fatal_at_start(&self) -> bool {
        self.is_permanent() || self.code().is_none()
    }
}

/// SQS counts visibility in whole seconds: round up, so a 700 ms backoff is 1 s, not 0.
pub(crate) fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A received message with what the worker needs of it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub receive_count: u32,
    pub attributes: HashMap<String, String>,
    pub message_attributes: HashMap<String, String>,
    /// Raw message attributes, kept for copying to a dead-letter queue.
    pub raw_message_attributes: HashMap<String, MessageAttributeValue>,
    pub received_at: Instant,
}

impl Received {
    /// `None` without a receipt handle: such a message can be neither deleted nor returned.
    pub(crate) fn new(
        message_id: Option<String>,
        receipt_handle: Option<String>,
        body: Option<String>,
        attributes: HashMap<String, String>,
        raw_message_attributes: HashMap<String, MessageAttributeValue>,
        received_at: Instant,
    ) -> Option<Self> {
        let receive_count = attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let message_attributes = raw_message_attributes
            .iter()
            .filter_map(|(k, v)| v.string_value().map(|s| (k.clone(), s.to_string())))
            .collect();
        Some(Self {
            message_id: message_id.unwrap_or_default(),
            receipt_handle: receipt_handle?,
            body: body.unwrap_or_default(),
            receive_count,
            attributes,
            message_attributes,
            raw_message_attributes,
            received_at,
        })
    }

    /// The `MessageGroupId` (FIFO ordering group, or a fair queue's tenant).
    pub(crate) fn group_id(&self) -> Option<&str> {
        self.attributes.get("MessageGroupId").map(String::as_str)
    }
}

/// What the worker learns about its queue at start.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueInfo {
    pub has_redrive: bool,
    pub fifo: bool,
}

/// One entry of a batch call that SQS did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailedEntry {
    /// Index of the entry in the request.
    pub index: usize,
    pub code: String,
    /// SQS blames the request (retrying it will not help).
    pub sender_fault: bool,
}

impl FailedEntry {
    /// An entry of a batch answer's `Failed` list; `None` when its id is not an index we sent.
    pub(crate) fn new(id: &str, code: String, sender_fault: bool) -> Option<Self> {
        Some(Self {
            index: id.parse().ok()?,
            code,
            sender_fault,
        })
    }
}

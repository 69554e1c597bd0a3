//! SQS calls through the AWS SDK's full request pipeline (with its own retries). Every call the
//! worker makes has this form; receive and batch delete also have the [`super::direct`] one.

use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName,
};
use tokio::time::Instant;

use super::types::{FailedEntry, QueueInfo, Received, SqsError, SqsErrorKind, SYSTEM_ATTRIBUTES};
use crate::limits::SQS_MAX_MESSAGE_ATTRIBUTES;

/// The SDK's error, with its kind: a service error keeps its code.
fn error<E, R>(op: &'static str, e: SdkError<E, R>) -> SqsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let kind = match (&e, e.code()) {
        (_, Some(code)) => SqsErrorKind::Service { code: code.into() },
        (SdkError::TimeoutError(_), None) => SqsErrorKind::Timeout,
        (SdkError::DispatchFailure(d), None) if d.is_timeout() => SqsErrorKind::Timeout,
        (SdkError::DispatchFailure(_), None) => SqsErrorKind::Transport,
        (SdkError::ConstructionFailure(_), None) => SqsErrorKind::Config,
        (_, None) => SqsErrorKind::Protocol,
    };
    SqsError::new(op, kind, DisplayErrorContext(&e))
}

fn build_error(op: &'static str, e: impl std::fmt::Display) -> SqsError {
    SqsError::new(op, SqsErrorKind::Protocol, e)
}

pub(super) async fn inspect(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> Result<QueueInfo, SqsError> {
    let out = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .attribute_names(QueueAttributeName::FifoQueue)
        .send()
        .await
        .map_err(|e| error("GetQueueAttributes", e))?;
    let attrs = out.attributes.unwrap_or_default();
    Ok(QueueInfo {
        has_redrive: attrs
            .get(&QueueAttributeName::RedrivePolicy)
            .is_some_and(|s| !s.is_empty()),
        fifo: attrs
            .get(&QueueAttributeName::FifoQueue)
            .is_some_and(|s| s == "true"),
    })
}

pub(super) async fn receive(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    max: usize,
    wait: Duration,
    visibility: Duration,
) -> Result<Vec<Received>, SqsError> {
    let out = client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max as i32)
        .wait_time_seconds(wait.as_secs() as i32)
        .visibility_timeout(visibility.as_secs() as i32)
        .set_message_system_attribute_names(Some(
            SYSTEM_ATTRIBUTES
                .iter()
                .map(|a| MessageSystemAttributeName::from(*a))
                .collect(),
        ))
        .message_attribute_names("All")
        .send()
        .await
        .map_err(|e| error("ReceiveMessage", e))?;
    let now = Instant::now();
    Ok(out
        .messages
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let attributes = m
                .attributes
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.as_str().to_string(), v))
                .collect();
            Received::new(
                m.message_id,
                m.receipt_handle,
                m.body,
                attributes,
                m.message_attributes.unwrap_or_default(),
                now,
            )
        })
        .collect())
}

pub(super) async fn set_visibility(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipt: &str,
    seconds: u64,
) -> Result<(), SqsError> {
    client
        .change_message_visibility()
        .queue_url(queue_url)
        .receipt_handle(receipt)
        .visibility_timeout(seconds as i32)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| error("ChangeMessageVisibility", e))
}

pub(super) async fn set_visibility_batch(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    entries: &[(&str, Duration)],
) -> Result<Vec<FailedEntry>, SqsError> {
    const OP: &str = "ChangeMessageVisibilityBatch";
    let entries = entries.iter().zip(0..).map(|((receipt, vis), i)| {
        ChangeMessageVisibilityBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(*receipt)
            .visibility_timeout(vis.as_secs() as i32)
            .build()
    });
    let out = client
        .change_message_visibility_batch()
        .queue_url(queue_url)
        .set_entries(Some(built(OP, entries)?))
        .send()
        .await
        .map_err(|e| error(OP, e))?;
    Ok(failed(out.failed))
}

pub(super) async fn delete_batch(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipts: &[String],
) -> Result<Vec<FailedEntry>, SqsError> {
    const OP: &str = "DeleteMessageBatch";
    let entries = receipts.iter().zip(0..).map(|(r, i)| {
        DeleteMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(r)
            .build()
    });
    let out = client
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(built(OP, entries)?))
        .send()
        .await
        .map_err(|e| error(OP, e))?;
    Ok(failed(out.failed))
}

/// A batch's request entries, or why one could not be built.
fn built<T, E: std::fmt::Display>(
    op: &'static str,
    entries: impl Iterator<Item = Result<T, E>>,
) -> Result<Vec<T>, SqsError> {
    entries
        .collect::<Result<_, _>>()
        .map_err(|e| build_error(op, e))
}

/// A batch answer's `Failed` list.
fn failed(entries: Vec<BatchResultErrorEntry>) -> Vec<FailedEntry> {
    entries
        .into_iter()
        .filter_map(|f| FailedEntry::new(&f.id, f.code, f.sender_fault))
        .collect()
}

/// Copies a message (body and attributes, plus `why` as extra string attributes while SQS's
/// limit leaves room) to a dead-letter queue.
pub(super) async fn send_dead_letter(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    msg: &Received,
    why: &[(&str, String)],
) -> Result<(), SqsError> {
    let mut attrs = msg.raw_message_attributes.clone();
    for (k, v) in why {
        if attrs.len() >= SQS_MAX_MESSAGE_ATTRIBUTES {
            break;
        }
        if let Ok(a) = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
        {
            attrs.insert((*k).to_string(), a);
        }
    }
    let mut req = client
        .send_message()
        .queue_url(dlq_url)
        .message_body(&msg.body)
        .set_message_attributes(Some(attrs));
    if dlq_url.ends_with(".fifo") {
        let group = msg.group_id().unwrap_or("dead-letter").to_string();
        req = req
            .message_group_id(group)
            .message_deduplication_id(&msg.message_id);
    }
    req.send()
        .await
        .map(|_| ())
        .map_err(|e| error("SendMessage", e))
}

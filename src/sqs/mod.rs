//! SQS as the worker uses it: [`Sqs`] counts every call and sends receives and batch deletes
//! either through the AWS SDK ([`sdk`]) or directly ([`direct`]); the [`deleter`] batches
//! deletes and the [`visibility`] keeper extends running jobs' messages.

mod credentials;
pub(crate) mod deleter;
pub(crate) mod direct;
mod sdk;
mod types;
pub(crate) mod visibility;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use types::{whole_seconds_up, FailedEntry, QueueInfo, Received};
pub use types::{SqsError, SqsErrorKind};

use crate::limits::{SQS_MAX_BATCH_ENTRIES, SQS_MAX_VISIBILITY};
use crate::stats::Stats;
use direct::{DirectClient, DirectSettings};

/// How receives and batch deletes are sent (`--sqs-client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqsClientKind {
    /// Signed and sent by the worker on the SDK's HTTP client, endpoint rules and credentials.
    Direct,
    /// The AWS SDK's full request pipeline.
    Sdk,
}

/// The worker's SQS client: every call counted in its [`Stats`].
#[derive(Clone)]
pub struct Sqs {
    client: aws_sdk_sqs::Client,
    /// When set, receives and batch deletes go through it instead of the SDK.
    direct: Option<Arc<DirectClient>>,
    stats: Arc<Stats>,
}

impl Sqs {
    /// Every call through the SDK `client`.
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        Self {
            client,
            direct: None,
            stats: Arc::default(),
        }
    }

    /// The client an SQS SDK client built from `sdk` would be, with receives and batch deletes
    /// sent the `kind` way. Fails without a region or credentials provider.
    pub async fn connect(
        sdk: &aws_config::SdkConfig,
        kind: SqsClientKind,
    ) -> Result<Self, SqsError> {
        // One credentials cache under both paths: they fetch as often as the SDK alone would.
        let credentials = sdk
            .credentials_provider()
            .map(credentials::SharedCache::provider);
        let mut conf = aws_sdk_sqs::config::Builder::from(sdk);
        conf.set_credentials_provider(credentials.clone());
        let sqs = Self::new(aws_sdk_sqs::Client::from_conf(conf.build()));
        match kind {
            SqsClientKind::Sdk => Ok(sqs),
            SqsClientKind::Direct => {
                let mut settings = DirectSettings::from_sdk(sdk)?;
                if let Some(c) = credentials {
                    settings.credentials = c;
                }
                let direct = DirectClient::new(&settings).await?;
                Ok(Self {
                    direct: Some(Arc::new(direct)),
                    ..sqs
                })
            }
        }
    }

    /// The live counters of this client and of the worker that uses it.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub(crate) fn counters(&self) -> &Stats {
        &self.stats
    }

    /// Checks that the queue exists and reads whether it has a redrive policy.
    pub(crate) async fn inspect(&self, queue_url: &str) -> Result<QueueInfo, SqsError> {
        sdk::inspect(&self.client, queue_url).await
    }

    pub(crate) async fn receive(
        &self,
        queue_url: &str,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, SqsError> {
        Stats::add(&self.stats.receive_requests, 1);
        let messages = match &self.direct {
            Some(d) => d.receive(queue_url, max, wait, visibility).await,
            None => sdk::receive(&self.client, queue_url, max, wait, visibility).await,
        }
        .inspect_err(|_| Stats::add(&self.stats.receive_errors, 1))?;
        if messages.is_empty() {
            Stats::add(&self.stats.empty_receives, 1);
        }
        Stats::add(&self.stats.messages_received, messages.len() as u64);
        Ok(messages)
    }

    /// Sets the visibility of one message (a failed job's backoff).
    pub(crate) async fn set_visibility(
        &self,
        queue_url: &str,
        receipt: &str,
        visibility: Duration,
    ) -> Result<(), SqsError> {
        Stats::add(&self.stats.visibility_requests, 1);
        let seconds = whole_seconds_up(visibility).min(SQS_MAX_VISIBILITY.as_secs());
        sdk::set_visibility(&self.client, queue_url, receipt, seconds)
            .await
            .inspect_err(|_| Stats::add(&self.stats.visibility_errors, 1))
    }

    /// Changes the visibility of up to 10 messages; returns the entries that failed.
    pub(crate) async fn set_visibility_batch(
        &self,
        queue_url: &str,
        entries: &[(&str, Duration)],
    ) -> Result<Vec<FailedEntry>, SqsError> {
        Stats::add(&self.stats.visibility_requests, 1);
        let failed = sdk::set_visibility_batch(&self.client, queue_url, entries)
            .await
            .inspect_err(|_| Stats::add(&self.stats.visibility_errors, 1))?;
        Stats::add(&self.stats.visibility_errors, failed.len() as u64);
        Ok(failed)
    }

    /// Makes messages receivable again at once, in batches of 10. Errors are logged: the
    /// messages then come back when their visibility timeout ends.
    pub(crate) async fn return_now(&self, queue_url: &str, messages: &[Received]) {
        // All batches at once: messages handed back wait for no round trip but their own.
        let returns = messages
            .chunks(SQS_MAX_BATCH_ENTRIES)
            .map(|chunk| self.return_batch(queue_url, chunk));
        futures_util::future::join_all(returns).await;
    }

    /// One batch of [`Sqs::return_now`].
    async fn return_batch(&self, queue_url: &str, chunk: &[Received]) {
        let entries: Vec<(&str, Duration)> = chunk
            .iter()
            .map(|m| (m.receipt_handle.as_str(), Duration::ZERO))
            .collect();
        match self.set_visibility_batch(queue_url, &entries).await {
            Ok(failed) => {
                // Only the entries SQS applied were returned; the failed ones wait out their
                // visibility timeout.
                let returned = chunk.len().saturating_sub(failed.len());
                for f in failed {
                    if let Some(m) = chunk.get(f.index) {
                        tracing::warn!(message_id = %m.message_id, code = f.code, "could not return message; it comes back when its visibility timeout ends");
                    }
                }
                Stats::add(&self.stats.messages_returned, returned as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, count = chunk.len(), "could not return messages; they come back when their visibility timeout ends")
            }
        }
    }

    /// Copies a message, with `why` as extra attributes, to a dead-letter queue.
    pub(crate) async fn send_dead_letter(
        &self,
        dlq_url: &str,
        msg: &Received,
        why: &[(&str, String)],
    ) -> Result<(), SqsError> {
        Stats::add(&self.stats.dead_letter_requests, 1);
        sdk::send_dead_letter(&self.client, dlq_url, msg, why).await
    }

    /// Deletes up to 10 messages; returns the entries that failed.
    pub(crate) async fn delete_batch(
        &self,
        queue_url: &str,
        receipts: &[String],
    ) -> Result<Vec<FailedEntry>, SqsError> {
        Stats::add(&self.stats.delete_requests, 1);
        match &self.direct {
            Some(d) => d.delete_batch(queue_url, receipts).await,
            None => sdk::delete_batch(&self.client, queue_url, receipts).await,
        }
    }
}

#[cfg(test)]
mod tests;

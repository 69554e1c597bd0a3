//! `queue-worker send`: test messages for the simulated job, sent with `SendMessageBatch`.

use std::io::Write;
use std::sync::Arc;

use std::time::Duration;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use clap::Args;
use tokio::task::JoinSet;

use super::Done;
use crate::config::parse::{self, Maybe};
use crate::config::ConfigError;
use crate::limits::{SQS_MAX_BATCH_ENTRIES, SQS_MAX_BODY_BYTES};

const NO_LIMIT: Duration = Duration::MAX;

#[derive(Debug, Clone, Args)]
pub(super) struct SendArgs {
    /// Queue to send to. Falls back to COPILOT_QUEUE_URI.
    #[arg(long, env = "QUEUE_URL", default_value = "", hide_default_value = true, value_parser = parse::optional(parse::url()))]
    queue_url: Maybe<String>,
    #[arg(long, env = "COPILOT_QUEUE_URI", hide = true, default_value = "", value_parser = parse::optional(parse::url()))]
    copilot_queue_uri: Maybe<String>,
    /// How many messages (each of --durations counts as one, repeated --count times).
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Job duration of every message (e.g. 10s, 250ms).
    #[arg(long, default_value = "1s", conflicts_with_all = ["body", "durations"], value_parser = parse::duration(Duration::ZERO, NO_LIMIT, None))]
    duration: Duration,
    /// A mix of durations, e.g. 1s,5s,2m: --count of each.
    #[arg(long, value_delimiter = ',', conflicts_with = "body", value_parser = parse::duration(Duration::ZERO, NO_LIMIT, None))]
    durations: Vec<Duration>,
    /// Make the jobs fail (they are retried, then dead-lettered).
    #[arg(long, conflicts_with = "body")]
    fail: bool,
    /// A raw body instead (sent as is, --count times).
    #[arg(long)]
    body: Option<String>,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 8, hide = true)]
    parallel: usize,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("SendMessageBatch failed: {0}")]
    Sqs(String),
    #[error("{failed} of {total} messages could not be sent (first error: {first})")]
    Partial {
        failed: u64,
        total: u64,
        first: String,
    },
}

impl SendArgs {
    fn queue(&self) -> Result<String, ConfigError> {
        self.queue_url
            .0
            .clone()
            .or(self.copilot_queue_uri.0.clone())
            .ok_or_else(|| {
                parse::invalid_setting::<Self>("queue_url", "missing: which queue to send to")
            })
    }

    /// The bodies to send, in order.
    fn bodies(&self) -> Result<Vec<String>, ConfigError> {
        if let Some(b) = &self.body {
            if b.len() > SQS_MAX_BODY_BYTES {
                return Err(parse::invalid_setting::<Self>(
                    "body",
                    "longer than SQS's 1 MiB",
                ));
            }
            return Ok(vec![b.clone(); self.count as usize]);
        }
        let durations = if self.durations.is_empty() {
            vec![self.duration]
        } else {
            self.durations.clone()
        };
        let one_round: Vec<String> = durations
            .iter()
            .map(|d| {
                if self.fail {
                    format!(r#"{{"duration_ms":{},"fail":true}}"#, d.as_millis())
                } else {
                    d.as_millis().to_string()
                }
            })
            .collect();
        Ok((0..self.count)
            .flat_map(|_| one_round.iter().cloned())
            .collect())
    }
}

/// `queue-worker send`.
pub(super) async fn main(args: SendArgs) -> Result<Done, SendError> {
    let queue = args.queue()?;
    let bodies = args.bodies()?;
    let sdk = crate::aws::aws_config().await;
    let client = aws_sdk_sqs::Client::new(&sdk);
    send(&client, &queue, bodies, args.parallel).await?;
    Ok(Done::Success)
}

/// Sends the bodies; prints progress for large counts and one summary line.
async fn send(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    bodies: Vec<String>,
    parallel: usize,
) -> Result<u64, SendError> {
    let total = bodies.len() as u64;
    let started = std::time::Instant::now();
    let queue_url: Arc<str> = queue_url.into();
    let fifo = queue_url.ends_with(".fifo");
    let mut set = JoinSet::new();
    let mut sent = 0u64;
    let mut first_error = String::new();
    let show_progress = total >= 1000;
    let chunks: Vec<Vec<String>> = bodies
        .chunks(SQS_MAX_BATCH_ENTRIES)
        .map(<[String]>::to_vec)
        .collect();
    let mut next_id = 0u64;
    let mut settle = |r: Result<(u64, u64, String), String>, sent: &mut u64| {
        let err = match r {
            Ok((ok, _bad, err)) => {
                *sent += ok;
                err
            }
            Err(e) => e,
        };
        if first_error.is_empty() {
            first_error = err;
        }
    };
    for chunk in chunks {
        while set.len() >= parallel.max(1) {
            if let Some(Ok(r)) = set.join_next().await {
                settle(r, &mut sent);
            }
            if show_progress {
                eprint!("\rsent {sent}/{total}");
                let _ = std::io::stderr().flush();
            }
        }
        let client = client.clone();
        let url = queue_url.clone();
        let base = next_id;
        next_id += chunk.len() as u64;
        set.spawn(async move {
            let mut req = client.send_message_batch().queue_url(&*url);
            for (i, body) in chunk.iter().enumerate() {
                let mut e = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body);
                if fifo {
                    e = e
                        .message_group_id(format!("g{}", (base + i as u64) % 16))
                        .message_deduplication_id(format!(
                            "{}-{}",
                            std::process::id(),
                            base + i as u64
                        ));
                }
                req = req.entries(e.build().map_err(|e| e.to_string())?);
            }
            let out = req
                .send()
                .await
                .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
            let err = out
                .failed
                .first()
                .map(|f| format!("{}: {}", f.code, f.message.clone().unwrap_or_default()))
                .unwrap_or_default();
            Ok((out.successful.len() as u64, out.failed.len() as u64, err))
        });
    }
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            settle(r, &mut sent);
        }
    }
    if show_progress {
        eprintln!("\rsent {sent}/{total}");
    }
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    println!(
        "sent {sent} of {total} messages to {queue_url} in {:.1}s ({:.0} msg/s)",
        secs,
        sent as f64 / secs
    );
    if sent < total {
        let failed = total - sent;
        if sent == 0 && !first_error.is_empty() {
            return Err(SendError::Sqs(first_error));
        }
        return Err(SendError::Partial {
            failed,
            total,
            first: first_error,
        });
    }
    Ok(sent)
}

//! The library API: a worker with your own handler, in a few lines.
//!
//!     QUEUE_URL=http://127.0.0.1:PORT/000000000000/jobs AWS_ENDPOINT_URL=http://127.0.0.1:PORT \
//!     AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x \
//!     cargo run --example custom-handler
//!
//! Each body is treated as text: "fail" fails (retried with backoff), "poison" is a permanent
//! failure (dead-lettered), anything else is upper-cased and logged. Ctrl-C stops it cleanly.

use std::sync::Arc;

use queue_worker::{Handler, Job, Outcome, Protector, Sqs, SqsClientKind};
use tokio_util::sync::CancellationToken;

struct Shout;

impl Handler for Shout {
    async fn handle(&self, job: Job) -> Outcome {
        match job.body.as_str() {
            "fail" => Outcome::retry("asked to fail"),
            "poison" => Outcome::permanent("this message can never succeed"),
            body => {
                tracing::info!(message_id = %job.message_id, receive_count = job.receive_count, "{}", body.to_uppercase());
                Outcome::Success
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    queue_worker::init_logging(queue_worker::LogFormat::Text);
    let queue_url = std::env::var("QUEUE_URL").map_err(|_| anyhow::anyhow!("set QUEUE_URL"))?;
    let mut config = queue_worker::Config::new(queue_url);
    config.concurrency = 4;

    let sdk = queue_worker::aws_config().await;
    let sqs = Sqs::connect(&sdk, SqsClientKind::Direct).await?;
    // Off outside ECS (no ECS_AGENT_URI); on ECS the agent endpoint, as `queue-worker run` does.
    let protector = Protector::from_config(&config.protection, &sdk)?;

    let shutdown = CancellationToken::new();
    let on_ctrl_c = shutdown.clone();
    let signals = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });
    let stats = queue_worker::run(config, sqs, protector, Arc::new(Shout), shutdown).await?;
    signals.abort();
    println!(
        "done: {} succeeded, {} failed",
        stats.jobs_succeeded, stats.jobs_failed
    );
    Ok(())
}

//! The composition root of `queue-worker run`: settings → AWS clients → protector → handler →
//! [`crate::run`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::aws::aws_config;
use crate::config::args::{HandlerChoice, RunArgs};
use crate::config::ConfigError;
use crate::handler::{ExecHandler, ForwardHandler, Handler, SimulatedJob};
use crate::protection::{ProtectionError, Protector};
use crate::sqs::{Sqs, SqsError};
use crate::stats::Snapshot;
use crate::worker::RunOptions;
use crate::worker::WorkerError;
use crate::yielding::Lever;

/// After SIGTERM to an `--exec` child, how long before SIGKILL.
const EXEC_KILL_GRACE: Duration = Duration::from_secs(5);

/// Why `queue-worker run` could not start or run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot set up the SQS client: {0} (or run with --sqs-client sdk)")]
    Sqs(SqsError),
    #[error(transparent)]
    Protection(#[from] ProtectionError),
    #[error("cannot build the HTTP client for --forward-to: {0}")]
    Forward(reqwest::Error),
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// Runs the worker `args` describe until `shutdown` fires. `Ok(None)`: stopped before polling
/// (shutdown while waiting for the `--forward-to` app).
pub(crate) async fn run(
    args: RunArgs,
    lever: Lever,
    shutdown: CancellationToken,
) -> Result<Option<Snapshot>, AppError> {
    let handler = args.handler();
    let sqs_client = args.sqs_client;
    let config = args.into_config()?;
    let sdk = aws_config().await;
    let sqs = Sqs::connect(&sdk, sqs_client)
        .await
        .map_err(AppError::Sqs)?;
    let protector = Protector::from_config(&config.protection, &sdk)?;
    let options = RunOptions {
        lever,
        ecs: config
            .yielding
            .ecs_view
            .as_ref()
            .map(|_| aws_sdk_ecs::Client::new(&sdk)),
    };
    async fn go<H: Handler>(
        (config, sqs, protector, options): (crate::Config, Sqs, Protector, RunOptions),
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<Option<Snapshot>, AppError> {
        let handler = Arc::new(handler);
        let snap = crate::worker::run_with(config, sqs, protector, handler, shutdown, options);
        Ok(Some(snap.await?))
    }
    let parts = (config, sqs, protector, options);
    match handler {
        HandlerChoice::Forward(fwd) => {
            let handler = ForwardHandler::new(&fwd.url, fwd.timeout).map_err(AppError::Forward)?;
            if !handler.wait_ready(&fwd.health_url, &shutdown).await {
                return Ok(None);
            }
            go(parts, handler, shutdown).await
        }
        HandlerChoice::Exec { program, args } => {
            let handler = ExecHandler {
                program,
                args,
                kill_grace: EXEC_KILL_GRACE,
            };
            go(parts, handler, shutdown).await
        }
        HandlerChoice::Simulated => go(parts, SimulatedJob, shutdown).await,
    }
}

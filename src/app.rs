//! The composition root of `queue-worker run`: settings → AWS clients → protector → handler →
//! [`crate::run`]. Also the AWS set-up every command shares ([`aws_config`], [`http_client`]).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::args::{HandlerChoice, RunArgs};
use crate::config::ConfigError;
use crate::handler::{ExecHandler, ForwardHandler, Handler, SimulatedJob};
use crate::protection::{ProtectionError, Protector};
use crate::sqs::{Sqs, SqsError};
use crate::stats::Snapshot;
use crate::worker::WorkerError;

/// After SIGTERM to an `--exec` child, how long before SIGKILL.
const EXEC_KILL_GRACE: Duration = Duration::from_secs(5);

/// Loads AWS settings the standard way (env, profile, container credentials, `AWS_ENDPOINT_URL`),
/// with the HTTP client of [`http_client`].
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client())
        .load()
        .await
}

/// The HTTP(S) client of every AWS SDK call: hyper with rustls on ring (one TLS stack instead of
/// the SDK default's two). Clients built by hand (`Config::builder()`) need it too.
pub fn http_client() -> aws_sdk_sqs::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

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
    async fn go<H: Handler>(
        config: crate::Config,
        sqs: Sqs,
        protector: Protector,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<Option<Snapshot>, AppError> {
        let snap = crate::worker::run(config, sqs, protector, Arc::new(handler), shutdown).await?;
        Ok(Some(snap))
    }
    match handler {
        HandlerChoice::Forward(fwd) => {
            let handler = ForwardHandler::new(&fwd.url, fwd.timeout).map_err(AppError::Forward)?;
            if !handler.wait_ready(&fwd.health_url, &shutdown).await {
                return Ok(None);
            }
            go(config, sqs, protector, handler, shutdown).await
        }
        HandlerChoice::Exec { program, args } => {
            let handler = ExecHandler {
                program,
                args,
                kill_grace: EXEC_KILL_GRACE,
            };
            go(config, sqs, protector, handler, shutdown).await
        }
        HandlerChoice::Simulated => go(config, sqs, protector, SimulatedJob, shutdown).await,
    }
}

//! The command line: `run` (the default), `send`, `health`, `ecs`. [`main`] is the one place
//! where an outcome becomes a message and an exit code, so `src/main.rs` stays a few lines.

mod ecs;
mod send;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::config::args::RunArgs;
use crate::config::parse::{self, Maybe};
use crate::config::ConfigError;
use crate::telemetry::{self, LogFormat};

/// Exit code for bad settings (like clap's own usage errors).
const EXIT_CONFIG: u8 = 2;
/// Exit code when the user stops a watch (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "queue-worker",
    version,
    about = "SQS worker for Amazon ECS that holds task scale-in protection while jobs run"
)]
struct Cli {
    /// Log format: text for terminals, json for CloudWatch.
    #[arg(
        long,
        env = "WORKER_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume the queue (the default command).
    Run(Box<RunArgs>),
    /// Send test messages for the simulated job.
    Send(send::SendArgs),
    /// Ask the running worker's /health (the container health check): exit 0 if healthy.
    Health(HealthArgs),
    /// Scale the ECS service and watch it settle (events, counts, protected tasks).
    Ecs(ecs::EcsArgs),
}

#[derive(Debug, clap::Args)]
struct HealthArgs {
    /// Where the worker serves /health (its --metrics-addr).
    #[arg(long, env = "WORKER_METRICS_ADDR", default_value = "", hide_default_value = true, value_parser = parse::optional(parse::addr()))]
    metrics_addr: Maybe<std::net::SocketAddr>,
}

/// How a command failed: [`CliError::exit_code`] and its message are all `main` needs.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// A value a parser refused (already one line naming the flag and env var).
    #[error("{0}")]
    Value(String),
    #[error("unhealthy: {0}")]
    Unhealthy(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Send(#[from] send::SendError),
    #[error(transparent)]
    Ecs(#[from] ecs::EcsError),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Value(_) => EXIT_CONFIG,
            CliError::App(_) => EXIT_CONFIG,
            CliError::Send(send::SendError::Config(_)) => EXIT_CONFIG,
            CliError::Ecs(e) if e.is_config() => EXIT_CONFIG,
            CliError::Send(_) | CliError::Ecs(_) | CliError::Unhealthy(_) => 1,
            CliError::Signals(_) => 1,
        }
    }
}

/// What a command that did not fail asks the process to exit with.
enum Done {
    Success,
    /// Finished, but not as hoped (a watch that timed out).
    NotSteady,
    /// Stopped by the user.
    Interrupted,
}

/// Clap's own errors (help, version, usage) print as clap prints them; a value one of our
/// parsers refused becomes a [`CliError::Value`].
fn parsed<T>(r: Result<T, clap::Error>) -> Result<T, CliError> {
    r.map_err(|e| match parse::value_error_line(&e) {
        Some(line) => CliError::Value(line),
        None => e.exit(),
    })
}

/// Parses the command line, runs the command, and returns the process exit code.
pub async fn main() -> ExitCode {
    let outcome = async {
        let cli = parsed(Cli::try_parse())?;
        telemetry::init(cli.log_format);
        let command = match cli.command {
            Some(c) => c,
            // No subcommand: `run`, configured from the environment (what the container does).
            None => Command::Run(Box::new(parsed(RunArgs::from_env())?)),
        };
        match command {
            Command::Run(args) => run(*args).await,
            Command::Send(args) => send::main(args).await.map_err(CliError::from),
            Command::Health(args) => health(args).await,
            Command::Ecs(args) => ecs::main(args).await.map_err(CliError::from),
        }
    };
    match outcome.await {
        Ok(Done::Success) => ExitCode::SUCCESS,
        Ok(Done::NotSteady) => ExitCode::FAILURE,
        Ok(Done::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
        Err(e) => {
            eprintln!("queue-worker: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Fires the token on SIGTERM or SIGINT (a second signal does not kill: the drain has a deadline,
/// so later signals are only logged). Runs until the caller aborts the returned task.
fn shutdown_on_signals(token: CancellationToken) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                s = term.recv() => s.map(|_| "SIGTERM"),
                s = int.recv() => s.map(|_| "SIGINT"),
            };
            // None: the signal driver is gone (runtime shutting down).
            let Some(name) = name else { return };
            if token.is_cancelled() {
                tracing::info!("{name} received again; already shutting down");
            } else {
                tracing::info!("{name} received");
                token.cancel();
            }
        }
    }))
}

async fn run(args: RunArgs) -> Result<Done, CliError> {
    let shutdown = CancellationToken::new();
    let signals = shutdown_on_signals(shutdown.clone()).map_err(CliError::Signals)?;
    let result = app::run(args, shutdown.clone()).await;
    shutdown.cancel();
    signals.abort();
    result?;
    Ok(Done::Success)
}

async fn health(args: HealthArgs) -> Result<Done, CliError> {
    let Some(addr) = args.metrics_addr.into_option() else {
        return Err(CliError::Config(parse::invalid_setting::<HealthArgs>(
            "metrics_addr",
            "missing: the worker serves /health only when --metrics-addr is set",
        )));
    };
    let body = crate::observe::health_probe(addr)
        .await
        .map_err(CliError::Unhealthy)?;
    println!("{body}");
    Ok(Done::Success)
}
